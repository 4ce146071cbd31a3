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

    /// <summary>
    /// A chunk frame: offsets and indices in the header, the data bytes from <paramref name="data"/>
    /// (not copied), or, with a <paramref name="region"/> they fit in, copied there and only their
    /// place sent, at once (a small frame would otherwise wait in the stream's buffer while the
    /// peer could already read the chunk).
    /// </summary>
    public static async ValueTask WriteChunkAsync(Stream stream, TensorChunk chunk, ReadOnlyMemory<byte> data, CancellationToken cancellationToken,
        SharedRegion.Writer? region = null)
    {
        var frame = new DataFrame { Chunk = chunk };
        if (region?.TryPlace(data.Span) is not { } slice)
        {
            await DataFrames.WriteAsync(stream, frame, data, HeaderBytesMax, DataBytesMax, cancellationToken);
            return;
        }
        frame.Region = slice;
        await DataFrames.WriteAsync(stream, frame, ReadOnlyMemory<byte>.Empty, HeaderBytesMax, DataBytesMax, cancellationToken);
        await stream.FlushAsync(cancellationToken);
    }

    /// <summary>
    /// Writes <paramref name="elements"/> (of <paramref name="elementBytes"/> each, the first at
    /// <paramref name="firstElement"/>) as chunk frames of at most <see cref="DataBytesMax"/> bytes.
    /// </summary>
    public static async ValueTask WriteDenseAsync(Stream stream, long firstElement, ReadOnlyMemory<byte> elements, int elementBytes, CancellationToken cancellationToken,
        SharedRegion.Writer? region = null)
    {
        int step = DataBytesMax / elementBytes * elementBytes;
        for (int offset = 0; offset < elements.Length; offset += step)
        {
            int length = Math.Min(step, elements.Length - offset);
            await WriteChunkAsync(stream, new TensorChunk { OffsetElements = firstElement + offset / elementBytes }, elements.Slice(offset, length),
                cancellationToken, region);
        }
    }

    /// <summary>
    /// Reads the header of a frame whose lengths are in <paramref name="buffers"/>, leaving its
    /// data unread (a chunk's data may go straight to its destination: <see cref="ReadDenseDataAsync"/>).
    /// A chunk whose data lies in the connection's shared region returns that data's size, and
    /// the data reads below take it from there.
    /// </summary>
    public static async ValueTask<(DataFrame Frame, int DataBytes)> ReadHeaderAsync(Stream stream, FrameBuffers buffers, CancellationToken cancellationToken)
    {
        var (headerBytes, dataBytes) = await DataFrames.ReadHeaderAsync(stream, buffers.Lengths, buffers.Header, buffers.Data.Length, "data port", cancellationToken);
        DataFrame frame;
        try { frame = DataFrame.Parser.ParseFrom(buffers.Header.AsSpan(0, headerBytes)); }
        catch (InvalidProtocolBufferException e) { throw new InvalidDataException($"data port frame: the header is not a DataFrame ({e.Message})", e); }
        if (frame.BodyCase == DataFrame.BodyOneofCase.None)
            throw new InvalidDataException("data port frame: no body; expected one of DataFrame's");
        if (frame.BodyCase == DataFrame.BodyOneofCase.Chunk && !frame.Chunk.Data.IsEmpty)
            throw new InvalidDataException($"data port frame: chunk.data holds {frame.Chunk.Data.Length} bytes in the header; expected the data after the header");
        if (frame.BodyCase != DataFrame.BodyOneofCase.Chunk && dataBytes != 0)
            throw new InvalidDataException($"data port frame: {dataBytes} bytes of data after a {frame.BodyCase}; expected data only after a chunk");
        buffers.RegionData = default;
        if (frame.Region is { } slice)
        {
            if (frame.BodyCase != DataFrame.BodyOneofCase.Chunk || dataBytes != 0)
                throw new InvalidDataException(
                    $"data port frame: region set on a {frame.BodyCase} with {dataBytes} bytes of data; expected it only on a chunk without data");
            if (buffers.Region is not { } region)
                throw new InvalidDataException("data port frame: a chunk in the shared region; expected its data after the header (this connection has no region)");
            if (slice.Bytes > buffers.Data.Length)
                throw new InvalidDataException($"data port frame: region.bytes {slice.Bytes}; expected at most {buffers.Data.Length}");
            buffers.RegionData = region.Slice(slice);
            dataBytes = slice.Bytes;
        }
        return (frame, dataBytes);
    }

    /// <summary>Reads a chunk's data into the data buffer and wraps it as the chunk's data (valid until the next read).</summary>
    public static async ValueTask ReadDataAsync(Stream stream, FrameBuffers buffers, TensorChunk chunk, int dataBytes, CancellationToken cancellationToken)
    {
        if (buffers.InRegion)
        {
            // Valid until the exchange ends: the region is not written again before.
            chunk.Data = UnsafeByteOperations.UnsafeWrap(buffers.RegionData);
            return;
        }
        await stream.ReadExactlyAsync(buffers.Data.AsMemory(0, dataBytes), cancellationToken);
        chunk.Data = UnsafeByteOperations.UnsafeWrap(buffers.Data.AsMemory(0, dataBytes));
    }

    /// <summary>
    /// A dense chunk's data: float32 that continues the stream and fits <paramref name="destination"/>
    /// is read straight into place (the same checks as <see cref="ChunkReader.ReadDense"/>), and the
    /// new count of elements received is returned; with <paramref name="keepEncoded"/>, so are the
    /// elements of a 2-byte type, as they are, packed from the start of destination's bytes (as
    /// <see cref="ChunkReader.ReadDenseEncoded"/> places them). Anything else is read into the data
    /// buffer as the chunk's data and null is returned: the caller reads (and checks) it with ChunkReader.
    /// </summary>
    public static async ValueTask<long?> ReadDenseDataAsync(Stream stream, FrameBuffers buffers, TensorChunk chunk, int dataBytes, DType dtype,
        Memory<float> destination, long received, CancellationToken cancellationToken, bool keepEncoded = false)
    {
        int elementBytes = ElementCodec.ElementBytes(dtype);
        int elements = dataBytes / elementBytes;
        if ((dtype == DType.Float32 || keepEncoded) && chunk.Indices.IsEmpty && chunk.OffsetElements == received && dataBytes % elementBytes == 0
            && elements <= destination.Length - received && FloatMemory.TryAsWritableBytes(destination, out var whole))
        {
            var place = whole.Slice((int)received * elementBytes, dataBytes);
            if (buffers.InRegion) buffers.RegionData.Span.CopyTo(place.Span);
            else await stream.ReadExactlyAsync(place, cancellationToken);
            return received + elements;
        }
        await ReadDataAsync(stream, buffers, chunk, dataBytes, cancellationToken);
        return null;
    }

    /// <summary>
    /// The client's side of setting up a shared region (parameter_server.proto, "Shared region"):
    /// asks for <paramref name="bytes"/>, maps what the server offers from <paramref name="directory"/>
    /// and says whether it could. Returns the region, or null and why there is none (the server
    /// offers none, or it is on another host); the connection goes on either way.
    /// </summary>
    public static async Task<(SharedRegion? Region, string Detail)> RequestRegionAsync(Stream reader, Stream writer, FrameBuffers buffers, int bytes,
        string directory, CancellationToken cancellationToken)
    {
        await WriteAsync(writer, new DataFrame { RegionRequest = new SharedRegionRequest { Bytes = bytes } }, cancellationToken);
        await writer.FlushAsync(cancellationToken);
        var offer = (await ReadExpectedAsync(reader, buffers, "a region request's answer", cancellationToken, DataFrame.BodyOneofCase.RegionOffer)).RegionOffer;
        if (offer.Name.Length == 0) return (null, $"the server offers none: {offer.Detail}");
        SharedRegion? region = null;
        string detail = "";
        try
        {
            if (offer.Bytes != bytes) throw new InvalidDataException($"region_offer.bytes {offer.Bytes}; expected the {bytes} asked for");
            region = SharedRegion.Open(directory, offer.Name, offer.Bytes);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            detail = $"could not map the server's region ({e.Message})";
        }
        try
        {
            await WriteAsync(writer, new DataFrame { RegionAnswer = new SharedRegionAnswer { Mapped = region is not null, Detail = detail } }, cancellationToken);
            await writer.FlushAsync(cancellationToken);
        }
        catch
        {
            region?.Release();
            throw;
        }
        return (region, detail);
    }

    /// <summary>Reads the next frame whole (a chunk's data into the data buffer); null at the end of the stream between frames.</summary>
    public static async ValueTask<DataFrame?> ReadAsync(Stream stream, FrameBuffers buffers, CancellationToken cancellationToken)
    {
        if (!await DataFrames.ReadLengthsAsync(stream, buffers.Lengths, cancellationToken)) return null;
        var (frame, dataBytes) = await ReadHeaderAsync(stream, buffers, cancellationToken);
        if (frame.BodyCase == DataFrame.BodyOneofCase.Chunk) await ReadDataAsync(stream, buffers, frame.Chunk, dataBytes, cancellationToken);
        return frame;
    }

    /// <summary>Reads the next frame's header and checks it is one of <paramref name="expected"/>; the end of the stream is an error here.</summary>
    public static async ValueTask<(DataFrame Frame, int DataBytes)> ReadExpectedHeaderAsync(Stream stream, FrameBuffers buffers, string what,
        CancellationToken cancellationToken, params DataFrame.BodyOneofCase[] expected)
    {
        if (!await DataFrames.ReadLengthsAsync(stream, buffers.Lengths, cancellationToken))
            throw new EndOfStreamException($"data port: the connection ended inside {what}");
        var (frame, dataBytes) = await ReadHeaderAsync(stream, buffers, cancellationToken);
        if (Array.IndexOf(expected, frame.BodyCase) < 0)
            throw new InvalidDataException($"data port frame: {frame.BodyCase} inside {what}; expected {string.Join(" or ", expected)}");
        return (frame, dataBytes);
    }

    /// <summary>Reads the next frame whole and checks it is one of <paramref name="expected"/>; the end of the stream is an error here.</summary>
    public static async ValueTask<DataFrame> ReadExpectedAsync(Stream stream, FrameBuffers buffers, string what, CancellationToken cancellationToken,
        params DataFrame.BodyOneofCase[] expected)
    {
        var (frame, dataBytes) = await ReadExpectedHeaderAsync(stream, buffers, what, cancellationToken, expected);
        if (frame.BodyCase == DataFrame.BodyOneofCase.Chunk) await ReadDataAsync(stream, buffers, frame.Chunk, dataBytes, cancellationToken);
        return frame;
    }
}

/// <summary>One connection's reusable receive buffers (allocated once the peer has proven the secret).</summary>
public sealed class FrameBuffers
{
    public byte[] Lengths { get; } = new byte[DataFrames.LengthsBytes];
    public byte[] Header { get; } = new byte[ParameterDataProtocol.HeaderBytesMax];
    public byte[] Data { get; } = new byte[ParameterDataProtocol.DataBytesMax];

    /// <summary>The connection's shared region, once both ends have mapped it (worker --ps-transport shm); null: none.</summary>
    public SharedRegion? Region { get; set; }

    /// <summary>Where the data of the chunk whose header was read last lies in the region (empty: after the header).</summary>
    internal Memory<byte> RegionData { get; set; }

    internal bool InRegion => !RegionData.IsEmpty;
}
