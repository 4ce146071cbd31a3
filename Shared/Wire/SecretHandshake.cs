using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Cluster.Shared.Security;

namespace Cluster.Shared.Wire;

/// <summary>
/// The handshake of the raw TCP data ports (the ring's and the parameter servers'): both sides
/// prove the cluster secret with HMAC-SHA256 over fresh nonces, so the secret never crosses the
/// wire and a recorded handshake cannot be replayed. Each protocol has its own magic and role
/// labels, so a proof made for one port is worthless on another.
///  1. server → client: magic (4 bytes), version (1 byte), server nonce (32 bytes)
///  2. client → server: client nonce (32), HMAC(secret, "{label}-client" | server nonce | client nonce) (32),
///     then the hello: [length int32 LE][bytes] (at most <see cref="HelloBytesMax"/>)
///  3. server → client: 0 and HMAC(secret, "{label}-server" | client nonce | server nonce) (32);
///     or 1 and [length][UTF-8 reason], and the connection is closed.
/// Nothing else is read or written before step 3 succeeds.
/// </summary>
public sealed class SecretHandshake(string magic, byte version, string label)
{
    public const int HelloBytesMax = 4096;
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int NonceBytes = 32;
    private const int MacBytes = 32;
    private readonly byte[] _magic = Encoding.ASCII.GetBytes(magic);

    /// <summary>
    /// Server side: greets, checks the client's proof and (with <paramref name="checkHello"/>,
    /// which returns why it refuses or null) its hello, proves itself. Returns the hello.
    /// </summary>
    public async Task<byte[]> AcceptAsync(Stream stream, ClusterSecret secret, CancellationToken cancellationToken, Func<byte[], string?>? checkHello = null)
    {
        byte[] serverNonce = RandomNumberGenerator.GetBytes(NonceBytes);
        byte[] greeting = [.. _magic, version, .. serverNonce];
        await stream.WriteAsync(greeting, cancellationToken);
        await stream.FlushAsync(cancellationToken);

        byte[] proof = new byte[NonceBytes + MacBytes];
        await stream.ReadExactlyAsync(proof, cancellationToken);
        byte[] clientNonce = proof[..NonceBytes];
        byte[] hello = await ReadBlockAsync(stream, cancellationToken);
        if (!CryptographicOperations.FixedTimeEquals(proof.AsSpan(NonceBytes), Mac(secret, "client", serverNonce, clientNonce)))
            throw await RefuseAsync(stream, "the cluster secret presented is wrong", cancellationToken);
        if (checkHello?.Invoke(hello) is { } refusal) throw await RefuseAsync(stream, refusal, cancellationToken);

        byte[] answer = [0, .. Mac(secret, "server", clientNonce, serverNonce)];
        await stream.WriteAsync(answer, cancellationToken);
        await stream.FlushAsync(cancellationToken);
        return hello;
    }

    /// <summary>Client side: answers the greeting with its proof and hello, and checks the server's proof.</summary>
    /// <exception cref="HandshakeFailedException">The server is not this kind of port, refused, or did not prove the secret.</exception>
    public async Task ConnectAsync(Stream stream, ClusterSecret secret, ReadOnlyMemory<byte> hello, CancellationToken cancellationToken)
    {
        if (hello.Length > HelloBytesMax) throw new ArgumentException($"hello: {hello.Length} bytes; expected at most {HelloBytesMax}", nameof(hello));
        byte[] greeting = new byte[_magic.Length + 1 + NonceBytes];
        await stream.ReadExactlyAsync(greeting, cancellationToken);
        if (!greeting.AsSpan(0, _magic.Length).SequenceEqual(_magic) || greeting[_magic.Length] != version)
            throw new HandshakeFailedException($"{label} data port: the greeting is not {magic} version {version}; is this address a {label} data port of the same version?");
        byte[] serverNonce = greeting[(_magic.Length + 1)..];
        byte[] clientNonce = RandomNumberGenerator.GetBytes(NonceBytes);
        byte[] message = new byte[2 * NonceBytes + sizeof(int) + hello.Length];
        clientNonce.CopyTo(message, 0);
        Mac(secret, "client", serverNonce, clientNonce).CopyTo(message, NonceBytes);
        BinaryPrimitives.WriteInt32LittleEndian(message.AsSpan(2 * NonceBytes), hello.Length);
        hello.Span.CopyTo(message.AsSpan(2 * NonceBytes + sizeof(int)));
        await stream.WriteAsync(message, cancellationToken);
        await stream.FlushAsync(cancellationToken);

        byte[] status = new byte[1];
        await stream.ReadExactlyAsync(status, cancellationToken);
        if (status[0] != 0)
        {
            string reason = Encoding.UTF8.GetString(await ReadBlockAsync(stream, cancellationToken));
            throw new HandshakeFailedException($"{label} data port refused this member: {reason}");
        }
        byte[] mac = new byte[MacBytes];
        await stream.ReadExactlyAsync(mac, cancellationToken);
        if (!CryptographicOperations.FixedTimeEquals(mac, Mac(secret, "server", clientNonce, serverNonce)))
            throw new HandshakeFailedException($"{label} data port: the peer did not prove the cluster secret");
    }

    /// <summary>Step 3's refusal, with its reason; returns the exception to throw.</summary>
    private async Task<InvalidDataException> RefuseAsync(Stream stream, string reason, CancellationToken cancellationToken)
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
        return new InvalidDataException($"{label} data port: refused a connection: {reason}");
    }

    private static async Task<byte[]> ReadBlockAsync(Stream stream, CancellationToken cancellationToken)
    {
        byte[] header = new byte[sizeof(int)];
        await stream.ReadExactlyAsync(header, cancellationToken);
        int size = BinaryPrimitives.ReadInt32LittleEndian(header);
        if (size is < 0 or > HelloBytesMax) throw new InvalidDataException($"handshake: a block of {size} bytes; expected 0 to {HelloBytesMax}");
        byte[] body = new byte[size];
        await stream.ReadExactlyAsync(body, cancellationToken);
        return body;
    }

    private byte[] Mac(ClusterSecret secret, string side, byte[] first, byte[] second) =>
        HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret.Value), (byte[])[.. Encoding.ASCII.GetBytes($"{label}-{side}"), .. first, .. second]);
}

/// <summary>A data port's handshake failed on the client side: wrong kind of port, refused, or an unproven peer.</summary>
public sealed class HandshakeFailedException(string message) : IOException(message);
