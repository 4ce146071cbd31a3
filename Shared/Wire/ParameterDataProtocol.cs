using Cluster.Protos;
using Google.Protobuf;

namespace Cluster.Shared.Wire;

/// <summary>
/// The parameter servers' data port (parameter_server.proto, "The data port"): its handshake,
/// its limits, and reading and writing <see cref="DataFrame"/>s, for the server and the worker alike.
/// </summary>
public static class ParameterDataProtocol
{
    public static readonly SecretHandshake Handshake = new("CLPS", 1, "ps");

    /// <summary>Largest data part of a frame: one chunk.</summary>
    public const int DataBytesMax = TensorWire.ChunkBytesMax;

    /// <summary>Largest header: a sparse chunk's indices (at most one chunk's worth) and the rest of a header.</summary>
    public const int HeaderBytesMax = TensorWire.ChunkBytesMax + 64 * 1024;

    /// <summary>Buffer of the buffered streams each side reads and writes through: small frames of one exchange leave in one write.</summary>
    public const int StreamBufferBytes = 64 * 1024;

    public static ValueTask WriteAsync(Stream stream, DataFrame frame, CancellationToken cancellationToken) =>
        DataFrames.WriteAsync(stream, frame, ReadOnlyMemory<byte>.Empty, HeaderBytesMax, DataBytesMax, cancellationToken);

    /// <summary>A chunk frame: offsets and indices in the header, the data bytes from <paramref name="data"/> (not copied).</summary>
    public static ValueTask WriteChunkAsync(Stream stream, TensorChunk chunk, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        DataFrames.WriteAsync(stream, new DataFrame { Chunk = chunk }, data, HeaderBytesMax, DataBytesMax, cancellationToken);

    /// <summary>
    /// Writes <paramref name="elements"/> (of <paramref name="elementBytes"/> each, the first at
    /// <paramref name="firstElement"/>) as chunk frames of at most <see cref="DataBytesMax"/> bytes.
    /// </summary>
    public static async ValueTask WriteDenseAsync(Stream stream, long firstElement, ReadOnlyMemory<byte> elements, int elementBytes, CancellationToken cancellationToken)
    {
        int step = DataBytesMax / elementBytes * elementBytes;
        for (int offset = 0; offset < elements.Length; offset += step)
        {
            int length = Math.Min(step, elements.Length - offset);
            await WriteChunkAsync(stream, new TensorChunk { OffsetElements = firstElement + offset / elementBytes }, elements.Slice(offset, length), cancellationToken);
        }
    }

    /// <summary>
    /// Reads the body of a frame whose lengths are in <paramref name="buffers"/>; a chunk's data
    /// wraps the data buffer (valid until the next read).
    /// </summary>
    public static async ValueTask<DataFrame> ReadBodyAsync(Stream stream, FrameBuffers buffers, CancellationToken cancellationToken)
    {
        var (headerBytes, dataBytes) = await DataFrames.ReadBodyAsync(stream, buffers.Lengths, buffers.Header, buffers.Data, "data port", cancellationToken);
        DataFrame frame;
        try { frame = DataFrame.Parser.ParseFrom(buffers.Header.AsSpan(0, headerBytes)); }
        catch (InvalidProtocolBufferException e) { throw new InvalidDataException($"data port frame: the header is not a DataFrame ({e.Message})", e); }
        if (frame.BodyCase == DataFrame.BodyOneofCase.None)
            throw new InvalidDataException("data port frame: no body; expected one of DataFrame's");
        if (frame.BodyCase == DataFrame.BodyOneofCase.Chunk)
        {
            if (!frame.Chunk.Data.IsEmpty)
                throw new InvalidDataException($"data port frame: chunk.data holds {frame.Chunk.Data.Length} bytes in the header; expected the data after the header");
            frame.Chunk.Data = UnsafeByteOperations.UnsafeWrap(buffers.Data.AsMemory(0, dataBytes));
        }
        else if (dataBytes != 0)
            throw new InvalidDataException($"data port frame: {dataBytes} bytes of data after a {frame.BodyCase}; expected data only after a chunk");
        return frame;
    }

    /// <summary>Reads the next frame; null at the end of the stream between frames.</summary>
    public static async ValueTask<DataFrame?> ReadAsync(Stream stream, FrameBuffers buffers, CancellationToken cancellationToken) =>
        await DataFrames.ReadLengthsAsync(stream, buffers.Lengths, cancellationToken) ? await ReadBodyAsync(stream, buffers, cancellationToken) : null;

    /// <summary>Reads the next frame and checks it is a <paramref name="expected"/>; the end of the stream is an error here.</summary>
    public static async ValueTask<DataFrame> ReadExpectedAsync(Stream stream, FrameBuffers buffers, string what, CancellationToken cancellationToken,
        params DataFrame.BodyOneofCase[] expected)
    {
        var frame = await ReadAsync(stream, buffers, cancellationToken)
            ?? throw new EndOfStreamException($"data port: the connection ended inside {what}");
        if (Array.IndexOf(expected, frame.BodyCase) < 0)
            throw new InvalidDataException($"data port frame: {frame.BodyCase} inside {what}; expected {string.Join(" or ", expected)}");
        return frame;
    }
}

/// <summary>One connection's reusable receive buffers (allocated once the peer has proven the secret).</summary>
public sealed class FrameBuffers
{
    public byte[] Lengths { get; } = new byte[DataFrames.LengthsBytes];
    public byte[] Header { get; } = new byte[ParameterDataProtocol.HeaderBytesMax];
    public byte[] Data { get; } = new byte[ParameterDataProtocol.DataBytesMax];
}
