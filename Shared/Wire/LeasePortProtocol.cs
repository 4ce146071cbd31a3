using System.Buffers.Binary;
using Cluster.Protos;

namespace Cluster.Shared.Wire;

/// <summary>
/// The frames of the coordinator's lease port (coordinator.proto, LeasePortFrame): the data
/// ports' framing with no data, one <see cref="LeasePortFrame"/> per frame. Both ends read
/// through a <see cref="Reader"/>, whose buffer grows to the largest frame seen.
/// </summary>
public static class LeasePortProtocol
{
    public static readonly SecretHandshake Handshake = new("CLLP", 1, "lease");

    /// <summary>Largest frame either side accepts: a reply's sample indices (batch size 65,536) or a request's applied ranks fit well below.</summary>
    public const int FrameBytesMax = 1 << 20;

    public static ValueTask WriteAsync(Stream stream, LeasePortFrame frame, CancellationToken cancellationToken) =>
        DataFrames.WriteAsync(stream, frame, ReadOnlyMemory<byte>.Empty, FrameBytesMax, 0, cancellationToken);

    /// <summary>Reads one side's frames from one connection.</summary>
    public sealed class Reader(Stream stream)
    {
        private byte[] _buffer = new byte[4 << 10];

        /// <summary>The next frame; null when the stream ended between frames.</summary>
        /// <exception cref="InvalidDataException">A frame against the rules (too large, with data, not a LeasePortFrame).</exception>
        public async Task<LeasePortFrame?> ReadAsync(CancellationToken cancellationToken)
        {
            if (!await DataFrames.ReadLengthsAsync(stream, _buffer, cancellationToken)) return null;
            int headerBytes = BinaryPrimitives.ReadInt32LittleEndian(_buffer);
            int dataBytes = BinaryPrimitives.ReadInt32LittleEndian(_buffer.AsSpan(sizeof(int)));
            if (headerBytes is < 0 or > FrameBytesMax || dataBytes != 0)
                throw new InvalidDataException($"lease frame: a {headerBytes}-byte header and {dataBytes} bytes of data; expected at most {FrameBytesMax} and 0");
            if (headerBytes > _buffer.Length) _buffer = new byte[Math.Min(FrameBytesMax, Math.Max(headerBytes, 2 * _buffer.Length))];
            await stream.ReadExactlyAsync(_buffer.AsMemory(0, headerBytes), cancellationToken);
            try
            {
                return LeasePortFrame.Parser.ParseFrom(_buffer, 0, headerBytes);
            }
            catch (Google.Protobuf.InvalidProtocolBufferException e)
            {
                throw new InvalidDataException($"lease frame: not a LeasePortFrame ({e.Message})", e);
            }
        }
    }
}
