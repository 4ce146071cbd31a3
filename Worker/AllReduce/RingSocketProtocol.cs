using Cluster.Protos;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Google.Protobuf;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// The ring data port's handshake and framing (ring.proto, "Ring data port"): both sides prove
/// the cluster secret with HMACs over fresh nonces (<see cref="SecretHandshake"/>: the secret
/// never crosses the wire), then the server sends RingSegments as <see cref="DataFrames"/>.
/// </summary>
public static class RingSocketProtocol
{
    /// <summary>Largest frame: one 1 MiB chunk and its header, with room to spare.</summary>
    public const int FrameBytesMax = 2 << 20;
    public const int SegmentHeaderBytesMax = 4096;
    public static readonly TimeSpan HandshakeTimeout = SecretHandshake.Timeout;
    private static readonly SecretHandshake Handshake = new("CLRG", 1, "ring");

    /// <summary>Server side: greets, checks the client's proof and hello, proves itself. Returns the hello.</summary>
    public static async Task<RingHello> AcceptAsync(Stream stream, ClusterSecret secret, CancellationToken cancellationToken) =>
        RingHello.Parser.ParseFrom(await Handshake.AcceptAsync(stream, secret, cancellationToken, hello => ParseHello(hello) is null ? "hello: not a RingHello message" : null));

    /// <summary>Client side: answers the greeting with its proof and hello, and checks the server's proof.</summary>
    public static async Task ConnectAsync(Stream stream, ClusterSecret secret, RingHello hello, CancellationToken cancellationToken)
    {
        try { await Handshake.ConnectAsync(stream, secret, hello.ToByteArray(), cancellationToken); }
        catch (HandshakeFailedException e) { throw new RingBrokenException(e.Message); }
    }

    private static RingHello? ParseHello(byte[] bytes)
    {
        try { return RingHello.Parser.ParseFrom(bytes); }
        catch (InvalidProtocolBufferException) { return null; }
    }

    /// <summary>
    /// Writes one segment as [header length][data length][header: the segment without its data]
    /// [data]: the data goes from the segment's memory (the gradient vector) straight to the
    /// stream, without serializing it into a buffer first.
    /// </summary>
    public static ValueTask WriteSegmentAsync(Stream stream, RingSegment segment, CancellationToken cancellationToken)
    {
        var data = segment.Chunk?.Data ?? ByteString.Empty;
        var header = segment.Clone();
        if (header.Chunk is not null) header.Chunk.Data = ByteString.Empty;
        return DataFrames.WriteAsync(stream, header, data.Memory, SegmentHeaderBytesMax, FrameBytesMax, cancellationToken);
    }

    /// <summary>
    /// Reads one segment written by <see cref="WriteSegmentAsync"/>; null at the end of the stream.
    /// Both lengths are checked before anything is read into memory. The lengths and header are
    /// read into <paramref name="headerBuffer"/> (at least <see cref="SegmentHeaderBytesMax"/> bytes),
    /// the data into <paramref name="dataBuffer"/>, which the segment wraps: valid until the next read.
    /// </summary>
    public static async ValueTask<RingSegment?> ReadSegmentAsync(Stream stream, byte[] headerBuffer, byte[] dataBuffer, CancellationToken cancellationToken)
    {
        if (!await DataFrames.ReadLengthsAsync(stream, headerBuffer, cancellationToken)) return null;
        var (headerSize, dataSize) = await DataFrames.ReadHeaderAsync(stream, headerBuffer, headerBuffer, Math.Min(dataBuffer.Length, FrameBytesMax), "ring", cancellationToken);
        var segment = RingSegment.Parser.ParseFrom(headerBuffer.AsSpan(0, headerSize));
        await stream.ReadExactlyAsync(dataBuffer.AsMemory(0, dataSize), cancellationToken);
        segment.Chunk ??= new Protos.TensorChunk();
        segment.Chunk.Data = UnsafeByteOperations.UnsafeWrap(dataBuffer.AsMemory(0, dataSize));
        return segment;
    }
}
