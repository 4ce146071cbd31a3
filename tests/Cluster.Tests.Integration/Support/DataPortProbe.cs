namespace Cluster.Tests.Integration.Support;

/// <summary>What a data port (ring or parameter server) sends a raw client before it closes the connection.</summary>
public static class DataPortProbe
{
    /// <summary>The server's handshake greeting: magic, version, nonce (Shared/Wire/SecretHandshake.cs).</summary>
    public const int GreetingBytes = 4 + 1 + 32;

    /// <summary>Reads until the server closes (or resets) the connection; returns the bytes read.</summary>
    public static async Task<int> ReadUntilClosedAsync(Stream stream, TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        var buffer = new byte[8192];
        int total = 0, read;
        try
        {
            while ((read = await stream.ReadAsync(buffer, cancel.Token)) > 0) total += read;
        }
        catch (IOException)
        {
            // Reset by the server: closed as well.
        }
        return total;
    }

    /// <summary>Reads until the server closes; returns the bytes after the greeting (a refusal has none: the reply only follows a proof).</summary>
    public static async Task<int> BytesAfterGreetingAsync(Stream stream, TimeSpan timeout) =>
        Math.Max(0, await ReadUntilClosedAsync(stream, timeout) - GreetingBytes);
}
