using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Cluster.Shared.Security;

namespace Cluster.Shared.Wire;

/// <summary>
/// A raw TCP listener of the cluster (a parameter server's data port, the coordinator's lease
/// port): TLS when the process has certificates (mutual under --mtls), and every connection
/// proves the cluster secret with its port's <see cref="SecretHandshake"/> before it is read any
/// further. Connections that fail the handshake are closed without a frame; the rest go to
/// <c>serve</c>, and a connection that breaks or sends a frame against the rules is closed (the
/// peer reconnects).
/// </summary>
public sealed class AuthenticatedListener : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly ClusterSecurity _security;
    private readonly SecretHandshake _handshake;
    private readonly int _connectionsMax;
    private readonly bool _threadPerConnection;
    private readonly Func<Stream, CancellationToken, Task> _serve;
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<Stream, Task> _connections = new();
    private readonly Task _acceptLoop;
    private int _authenticated;

    /// <param name="serve">Serves one authenticated connection until it ends; the listener closes it afterwards.</param>
    /// <param name="threadPerConnection">
    /// Serve each connection on a thread of its own with blocking socket calls
    /// (<see cref="BlockingSocketStream"/>): for request-and-answer traffic whose latency is a
    /// step's, where a frame should wake its server directly, not through the socket engine and
    /// the thread pool. <c>serve</c> then runs on that thread and must not wait on other work.
    /// </param>
    public AuthenticatedListener(string bindAddress, int port, ClusterSecurity security, SecretHandshake handshake, int connectionsMax,
        Func<Stream, CancellationToken, Task> serve, bool threadPerConnection = false)
    {
        (_security, _handshake, _connectionsMax, _serve, _threadPerConnection) = (security, handshake, connectionsMax, serve, threadPerConnection);
        _listener = new TcpListener(IPAddress.Parse(bindAddress), port);
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _acceptLoop = AcceptLoopAsync();
    }

    /// <summary>The bound port (the one picked when 0 was asked).</summary>
    public int Port { get; }

    /// <summary>Connections that proved the secret; for tests.</summary>
    public int Authenticated => _authenticated;

    /// <summary>Connections accepted and not yet closed.</summary>
    public int Open => _connections.Count;

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try { socket = await _listener.AcceptSocketAsync(_stopping.Token); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            if (_connections.Count >= _connectionsMax)
            {
                socket.Dispose();
                continue;
            }
            socket.NoDelay = true;
            Stream stream = _threadPerConnection ? new BlockingSocketStream(socket) : new NetworkStream(socket, ownsSocket: true);
            var served = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _connections[stream] = served.Task;
            void Served() { _connections.TryRemove(stream, out var _); served.SetResult(); }
            if (_threadPerConnection)
                new Thread(() => ServeOnThisThread(stream, socket, Served)) { IsBackground = true, Name = "blocking connection" }.Start();
            else
                _ = ServeAsync(stream, socket).ContinueWith(_ => Served(), TaskScheduler.Default);
        }
    }

    /// <summary>A connection's own thread: every call below completes on it (blocking), as a task that has already ended.</summary>
    private void ServeOnThisThread(Stream stream, Socket socket, Action served)
    {
        try { ServeAsync(stream, socket).GetAwaiter().GetResult(); }
        catch (Exception)
        {
            // As on the thread pool, where a connection's unexpected failure ends only that connection.
        }
        finally { served(); }
    }

    private async Task ServeAsync(Stream network, Socket socket)
    {
        Stream stream = network;
        // Blocking calls do not see the handshake's token: the socket's own timeouts bound them.
        if (_threadPerConnection) socket.ReceiveTimeout = socket.SendTimeout = (int)SecretHandshake.Timeout.TotalMilliseconds;
        try
        {
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token))
            {
                timeout.CancelAfter(SecretHandshake.Timeout);
                if (_security.Certificate is { } certificate)
                {
                    var tls = new SslStream(network, leaveInnerStreamOpen: false);
                    stream = tls;
                    await tls.AuthenticateAsServerAsync(DataPortTls.ServerOptions(_security, certificate), timeout.Token);
                }
                await _handshake.AcceptAsync(stream, _security.Secret, timeout.Token);
            }
            Interlocked.Increment(ref _authenticated);
            if (_threadPerConnection) socket.ReceiveTimeout = socket.SendTimeout = 0;
            await _serve(stream, _stopping.Token);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or AuthenticationException or OperationCanceledException
            or SocketException or ObjectDisposedException)
        {
            // Refused, broken, or a frame against the rules: the connection is closed; the peer reconnects.
        }
        finally
        {
            await stream.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        _listener.Stop();
        await _acceptLoop;
        foreach (var stream in _connections.Keys) await stream.DisposeAsync();
        await Task.WhenAll(_connections.Values);
        _stopping.Dispose();
    }
}
