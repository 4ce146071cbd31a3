using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="BlockingSocketStream"/>: its async calls block the caller and hand back a task that
/// has already ended (so a connection's thread keeps the whole exchange), the socket's timeout
/// bounds a read, and disposing the stream ends a read in progress.
/// </summary>
[Trait("Tier", "unit")]
public sealed class BlockingSocketStreamTests
{
    private static (Socket Client, Socket Served) ConnectedPair()
    {
        using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        return (client, listener.Accept());
    }

    [Fact]
    public async Task An_async_read_waits_on_the_callers_thread_and_returns_a_task_that_has_ended()
    {
        var (client, served) = ConnectedPair();
        using var _ = client;
        using var stream = new BlockingSocketStream(served);
        var writer = Task.Run(async () => { await Task.Delay(300); client.Send([1, 2, 3]); });

        var waited = Stopwatch.StartNew();
        var buffer = new byte[3];
        var read = stream.ReadAsync(buffer).AsTask();
        Assert.True(read.IsCompletedSuccessfully, "ReadAsync returned before its data arrived");
        Assert.True(waited.Elapsed >= TimeSpan.FromMilliseconds(200), $"ReadAsync returned after {waited.Elapsed.TotalMilliseconds:0} ms, before the data was sent");
        Assert.Equal(3, await read);
        Assert.Equal(new byte[] { 1, 2, 3 }, buffer);

        var write = stream.WriteAsync(new byte[] { 4, 5 }).AsTask();
        Assert.True(write.IsCompletedSuccessfully);
        var echoed = new byte[2];
        Assert.Equal(2, client.Receive(echoed));
        Assert.Equal(new byte[] { 4, 5 }, echoed);
        await writer;
    }

    [Fact]
    public async Task The_sockets_receive_timeout_ends_a_read_that_gets_nothing()
    {
        var (client, served) = ConnectedPair();
        using var _ = client;
        using var stream = new BlockingSocketStream(served);
        served.ReceiveTimeout = 300;
        var waited = Stopwatch.StartNew();
        await Assert.ThrowsAsync<IOException>(() => stream.ReadAsync(new byte[1]).AsTask());
        Assert.InRange(waited.Elapsed.TotalMilliseconds, 250, 5_000);
    }

    [Fact]
    public void Disposing_the_stream_from_another_thread_ends_a_read_in_progress()
    {
        var (client, served) = ConnectedPair();
        using var _ = client;
        var stream = new BlockingSocketStream(served);
        Exception? failure = null;
        int? read = null;
        var reader = new Thread(() =>
        {
            try { read = stream.Read(new byte[1], 0, 1); }
            catch (Exception e) { failure = e; }
        });
        reader.Start();
        Thread.Sleep(200);
        stream.Dispose();
        Assert.True(reader.Join(TimeSpan.FromSeconds(5)), "the read went on after the stream was disposed");
        Assert.True(read == 0 || failure is IOException or ObjectDisposedException, $"the read ended with {read?.ToString() ?? failure?.GetType().Name}");
    }

    [Fact]
    public async Task ConnectAsync_leaves_the_socket_blocking_and_reports_a_refused_port_or_a_cancelled_connect()
    {
        using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        using var stream = await BlockingSocketStream.ConnectAsync("127.0.0.1", port, CancellationToken.None);
        using var served = listener.Accept();
        // Its first call, an async one, still blocks on the caller's thread: the socket never went non-blocking.
        var writer = Task.Run(async () => { await Task.Delay(200); served.Send([7]); });
        var read = stream.ReadAsync(new byte[1]).AsTask();
        Assert.True(read.IsCompletedSuccessfully, "ReadAsync returned before its data arrived");
        await writer;

        listener.Close();
        await Assert.ThrowsAsync<SocketException>(() => BlockingSocketStream.ConnectAsync("127.0.0.1", port, CancellationToken.None));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            BlockingSocketStream.ConnectAsync("127.0.0.1", port, new CancellationToken(canceled: true)));
    }
}
