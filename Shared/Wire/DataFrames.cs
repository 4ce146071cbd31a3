using System.Buffers;
using System.Buffers.Binary;
using Google.Protobuf;

namespace Cluster.Shared.Wire;

/// <summary>
/// The frames of the raw TCP data ports: [header length int32 LE][data length int32 LE]
/// [header: a protobuf message][data: raw bytes]. Tensor data never goes through protobuf:
/// it is written straight from the sender's buffer and read into the receiver's reusable
/// buffer. Both lengths are checked against the receiver's limits before anything is read.
/// </summary>
public static class DataFrames
{
    public const int LengthsBytes = 2 * sizeof(int);

    /// <summary>Writes one frame: lengths and header in one write from a pooled buffer, then the data from <paramref name="data"/>.</summary>
    public static async ValueTask WriteAsync(Stream stream, IMessage header, ReadOnlyMemory<byte> data, int headerBytesMax, int dataBytesMax,
        CancellationToken cancellationToken)
    {
        int headerSize = header.CalculateSize();
        if (headerSize > headerBytesMax || data.Length > dataBytesMax)
            throw new InvalidOperationException(
                $"frame: a {headerSize}-byte header and {data.Length} bytes of data; expected at most {headerBytesMax} and {dataBytesMax}");
        byte[] buffer = ArrayPool<byte>.Shared.Rent(LengthsBytes + headerSize);
        try
        {
            BinaryPrimitives.WriteInt32LittleEndian(buffer, headerSize);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(sizeof(int)), data.Length);
            header.WriteTo(buffer.AsSpan(LengthsBytes, headerSize));
            await stream.WriteAsync(buffer.AsMemory(0, LengthsBytes + headerSize), cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        if (data.Length > 0) await stream.WriteAsync(data, cancellationToken);
    }

    /// <summary>
    /// Reads the lengths of the next frame into the first <see cref="LengthsBytes"/> of
    /// <paramref name="buffer"/>; false at the end of the stream (between frames).
    /// </summary>
    public static async ValueTask<bool> ReadLengthsAsync(Stream stream, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int got = await stream.ReadAtLeastAsync(buffer[..LengthsBytes], LengthsBytes, throwOnEndOfStream: false, cancellationToken);
        if (got == 0) return false;
        if (got < LengthsBytes) throw new EndOfStreamException("frame: the stream ended inside a length prefix");
        return true;
    }

    /// <summary>
    /// Checks the lengths <see cref="ReadLengthsAsync"/> put in <paramref name="lengths"/> against
    /// the buffers' sizes and reads the header into <paramref name="headerBuffer"/>; the data
    /// (at most <paramref name="dataBytesMax"/>) is left for the caller to read where it belongs.
    /// Returns both sizes.
    /// </summary>
    public static async ValueTask<(int HeaderBytes, int DataBytes)> ReadHeaderAsync(Stream stream, ReadOnlyMemory<byte> lengths,
        byte[] headerBuffer, int dataBytesMax, string what, CancellationToken cancellationToken)
    {
        int headerSize = BinaryPrimitives.ReadInt32LittleEndian(lengths.Span);
        int dataSize = BinaryPrimitives.ReadInt32LittleEndian(lengths.Span[sizeof(int)..]);
        if (headerSize < 0 || headerSize > headerBuffer.Length || dataSize < 0 || dataSize > dataBytesMax)
            throw new InvalidDataException(
                $"{what} frame: a {headerSize}-byte header and {dataSize} bytes of data; expected at most {headerBuffer.Length} and {dataBytesMax}");
        await stream.ReadExactlyAsync(headerBuffer.AsMemory(0, headerSize), cancellationToken);
        return (headerSize, dataSize);
    }
}
