using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Cluster.Protos;
using Cluster.Shared.Security;
using Google.Protobuf;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// The ring data port's handshake and framing (ring.proto, "Ring data port"): both sides prove
/// the cluster secret with HMACs over fresh nonces (the secret never crosses the wire), then
/// the server sends length-prefixed RingSegment messages.
/// </summary>
public static class RingSocketProtocol
{
    /// <summary>Largest frame: one 1 MiB chunk and its header, with room to spare.</summary>
    public const int FrameBytesMax = 2 << 20;
    public const int HelloBytesMax = 4096;
    public const int SegmentHeaderBytesMax = 4096;
    public static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);
    private const byte Version = 1;
    private const int NonceBytes = 32;
    private const int MacBytes = 32;
    private static ReadOnlySpan<byte> Magic => "CLRG"u8;

    /// <summary>Server side: greets, checks the client's proof and hello, proves itself. Returns the hello.</summary>
    public static async Task<RingHello> AcceptAsync(Stream stream, ClusterSecret secret, CancellationToken cancellationToken)
    {
        byte[] serverNonce = RandomNumberGenerator.GetBytes(NonceBytes);
        byte[] greeting = [.. Magic, Version, .. serverNonce];
        await stream.WriteAsync(greeting, cancellationToken);
        await stream.FlushAsync(cancellationToken);

        byte[] proof = new byte[NonceBytes + MacBytes];
        await stream.ReadExactlyAsync(proof, cancellationToken);
        byte[] clientNonce = proof[..NonceBytes];
        byte[] helloBytes = await ReadFrameAsync(stream, HelloBytesMax, cancellationToken);
        if (!CryptographicOperations.FixedTimeEquals(proof.AsSpan(NonceBytes), Mac(secret, "ring-client", serverNonce, clientNonce)))
            throw await RefuseAsync(stream, "the cluster secret presented is wrong", cancellationToken);
        RingHello hello;
        try { hello = RingHello.Parser.ParseFrom(helloBytes); }
        catch (InvalidProtocolBufferException) { throw await RefuseAsync(stream, "hello: not a RingHello message", cancellationToken); }

        byte[] answer = [0, .. Mac(secret, "ring-server", clientNonce, serverNonce)];
        await stream.WriteAsync(answer, cancellationToken);
        await stream.FlushAsync(cancellationToken);
        return hello;
    }

    /// <summary>Client side: answers the greeting with its proof and hello, and checks the server's proof.</summary>
    public static async Task ConnectAsync(Stream stream, ClusterSecret secret, RingHello hello, CancellationToken cancellationToken)
    {
        byte[] greeting = new byte[Magic.Length + 1 + NonceBytes];
        await stream.ReadExactlyAsync(greeting, cancellationToken);
        if (!greeting.AsSpan(0, Magic.Length).SequenceEqual(Magic) || greeting[Magic.Length] != Version)
            throw new RingBrokenException($"ring data port: the greeting is not CLRG version {Version}; is this address a ring data port of the same version?");
        byte[] serverNonce = greeting[(Magic.Length + 1)..];
        byte[] clientNonce = RandomNumberGenerator.GetBytes(NonceBytes);
        byte[] proof = [.. clientNonce, .. Mac(secret, "ring-client", serverNonce, clientNonce)];
        await stream.WriteAsync(proof, cancellationToken);
        await WriteFrameAsync(stream, hello, cancellationToken);
        await stream.FlushAsync(cancellationToken);

        byte[] status = new byte[1];
        await stream.ReadExactlyAsync(status, cancellationToken);
        if (status[0] != 0)
        {
            string reason = Encoding.UTF8.GetString(await ReadFrameAsync(stream, HelloBytesMax, cancellationToken));
            throw new RingBrokenException($"ring data port refused this member: {reason}");
        }
        byte[] mac = new byte[MacBytes];
        await stream.ReadExactlyAsync(mac, cancellationToken);
        if (!CryptographicOperations.FixedTimeEquals(mac, Mac(secret, "ring-server", clientNonce, serverNonce)))
            throw new RingBrokenException("ring data port: the peer did not prove the cluster secret");
    }

    /// <summary>Writes one length-prefixed message (one write call: header and body from one pooled buffer).</summary>
    public static async ValueTask WriteFrameAsync(Stream stream, IMessage message, CancellationToken cancellationToken)
    {
        int size = message.CalculateSize();
        if (size > FrameBytesMax) throw new InvalidOperationException($"ring frame: {size} bytes; expected at most {FrameBytesMax}");
        byte[] buffer = ArrayPool<byte>.Shared.Rent(size + sizeof(int));
        try
        {
            BinaryPrimitives.WriteInt32LittleEndian(buffer, size);
            message.WriteTo(buffer.AsSpan(sizeof(int), size));
            await stream.WriteAsync(buffer.AsMemory(0, size + sizeof(int)), cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Writes one segment as [header length][data length][header: the segment without its data]
    /// [data]: the data goes from the segment's memory (the gradient vector) straight to the
    /// stream, without serializing it into a buffer first.
    /// </summary>
    public static async ValueTask WriteSegmentAsync(Stream stream, RingSegment segment, CancellationToken cancellationToken)
    {
        var data = segment.Chunk?.Data ?? ByteString.Empty;
        var header = segment.Clone();
        if (header.Chunk is not null) header.Chunk.Data = ByteString.Empty;
        int headerSize = header.CalculateSize();
        if (headerSize > SegmentHeaderBytesMax || data.Length > FrameBytesMax)
            throw new InvalidOperationException($"ring frame: a {headerSize}-byte header and {data.Length} bytes of data; expected at most {SegmentHeaderBytesMax} and {FrameBytesMax}");
        byte[] buffer = ArrayPool<byte>.Shared.Rent(2 * sizeof(int) + headerSize);
        try
        {
            BinaryPrimitives.WriteInt32LittleEndian(buffer, headerSize);
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(sizeof(int)), data.Length);
            header.WriteTo(buffer.AsSpan(2 * sizeof(int), headerSize));
            await stream.WriteAsync(buffer.AsMemory(0, 2 * sizeof(int) + headerSize), cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        if (data.Length > 0) await stream.WriteAsync(data.Memory, cancellationToken);
    }

    /// <summary>
    /// Reads one segment written by <see cref="WriteSegmentAsync"/>; null at the end of the stream.
    /// Both lengths are checked before anything is read into memory. The lengths and header are
    /// read into <paramref name="headerBuffer"/> (at least <see cref="SegmentHeaderBytesMax"/> bytes),
    /// the data into <paramref name="dataBuffer"/>, which the segment wraps: valid until the next read.
    /// </summary>
    public static async ValueTask<RingSegment?> ReadSegmentAsync(Stream stream, byte[] headerBuffer, byte[] dataBuffer, CancellationToken cancellationToken)
    {
        const int lengthsSize = 2 * sizeof(int);
        int got = await stream.ReadAtLeastAsync(headerBuffer.AsMemory(0, lengthsSize), lengthsSize, throwOnEndOfStream: false, cancellationToken);
        if (got == 0) return null;
        if (got < lengthsSize) throw new EndOfStreamException("ring frame: the stream ended inside a length prefix");
        int headerSize = BinaryPrimitives.ReadInt32LittleEndian(headerBuffer);
        int dataSize = BinaryPrimitives.ReadInt32LittleEndian(headerBuffer.AsSpan(sizeof(int)));
        if (headerSize is < 0 or > SegmentHeaderBytesMax || headerSize > headerBuffer.Length
            || dataSize < 0 || dataSize > FrameBytesMax || dataSize > dataBuffer.Length)
            throw new InvalidDataException($"ring frame: a {headerSize}-byte header and {dataSize} bytes of data; expected at most {SegmentHeaderBytesMax} and {FrameBytesMax}");
        await stream.ReadExactlyAsync(headerBuffer.AsMemory(0, headerSize), cancellationToken);
        var segment = RingSegment.Parser.ParseFrom(headerBuffer.AsSpan(0, headerSize));
        await stream.ReadExactlyAsync(dataBuffer.AsMemory(0, dataSize), cancellationToken);
        segment.Chunk ??= new Protos.TensorChunk();
        segment.Chunk.Data = UnsafeByteOperations.UnsafeWrap(dataBuffer.AsMemory(0, dataSize));
        return segment;
    }

    private static async Task<byte[]> ReadFrameAsync(Stream stream, int bytesMax, CancellationToken cancellationToken)
    {
        byte[] header = new byte[sizeof(int)];
        await stream.ReadExactlyAsync(header, cancellationToken);
        int size = BinaryPrimitives.ReadInt32LittleEndian(header);
        if (size < 0 || size > bytesMax) throw new InvalidDataException($"ring handshake: a frame of {size} bytes; expected 0 to {bytesMax}");
        byte[] body = new byte[size];
        await stream.ReadExactlyAsync(body, cancellationToken);
        return body;
    }

    private static async Task<InvalidDataException> RefuseAsync(Stream stream, string reason, CancellationToken cancellationToken)
    {
        byte[] text = Encoding.UTF8.GetBytes(reason);
        byte[] frame = new byte[1 + sizeof(int) + text.Length];
        frame[0] = 1;
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(1), text.Length);
        text.CopyTo(frame, 1 + sizeof(int));
        try
        {
            await stream.WriteAsync(frame, cancellationToken);
            await stream.FlushAsync(cancellationToken);
        }
        catch (IOException)
        {
            // The client is gone already.
        }
        return new InvalidDataException($"ring data port: refused a connection: {reason}");
    }

    private static byte[] Mac(ClusterSecret secret, string role, byte[] first, byte[] second) =>
        HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret.Value), (byte[])[.. Encoding.ASCII.GetBytes(role), .. first, .. second]);
}
