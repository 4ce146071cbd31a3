using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Cluster.Protos;
using Cluster.Shared.Security;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// The ring data port of a worker (ring.proto, "Ring data port"): accepts its successors'
/// connections, wraps them in TLS when the cluster has certificates, checks the secret
/// handshake, and keeps each connection by (job, generation) until the trainer takes it as the
/// stream to send its segments into. Connections that fail the handshake are closed at once.
/// </summary>
public sealed class RingDataListener : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly ClusterSecurity _security;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _acceptLoop;
    private readonly object _gate = new();
    private readonly Dictionary<(string JobId, long Generation), TaskCompletionSource<(RingHello Hello, Stream Stream)>> _slots = [];

    private RingDataListener(TcpListener listener, ClusterSecurity security, string address)
    {
        (_listener, _security, Address) = (listener, security, address);
        _acceptLoop = AcceptLoopAsync();
    }

    /// <summary>The address successors connect to, e.g. "http://127.0.0.1:40124" (https: TLS).</summary>
    public string Address { get; }

    /// <summary>Connections that reached the hand-over (secret proven); for tests and metrics.</summary>
    public int Accepted => _accepted;
    private int _accepted;

    public static RingDataListener Start(string bindAddress, int port, string advertiseHost, ClusterSecurity security)
    {
        var listener = new TcpListener(IPAddress.Parse(bindAddress), port);
        listener.Start();
        int boundPort = ((IPEndPoint)listener.LocalEndpoint).Port;
        return new RingDataListener(listener, security, $"{ClusterEndpoints.Scheme(security)}://{advertiseHost}:{boundPort}");
    }

    /// <summary>The successor's connection for a generation, once it has connected and proven the secret.</summary>
    public async Task<Stream> AcceptAsync(string jobId, long generation, int fromRank, CancellationToken cancellationToken)
    {
        TaskCompletionSource<(RingHello, Stream)> slot;
        lock (_gate) slot = SlotFor(jobId, generation);
        var (hello, stream) = await slot.Task.WaitAsync(cancellationToken);
        if (hello.FromRank != fromRank)
            throw new RingBrokenException($"ring: generation {generation} data connection came from rank {hello.FromRank}; expected the successor, rank {fromRank}");
        return stream;
    }

    /// <summary>Forgets a job's generations up to <paramref name="generation"/>, closing connections nobody took.</summary>
    public void Release(string jobId, long generation)
    {
        lock (_gate)
        {
            foreach (var key in _slots.Keys.Where(k => k.JobId == jobId && k.Generation <= generation).ToList())
            {
                var slot = _slots[key];
                _slots.Remove(key);
                if (!slot.TrySetCanceled() && slot.Task.IsCompletedSuccessfully) slot.Task.Result.Stream.Dispose();
            }
        }
    }

    private TaskCompletionSource<(RingHello, Stream)> SlotFor(string jobId, long generation)
    {
        if (!_slots.TryGetValue((jobId, generation), out var slot))
            _slots[(jobId, generation)] = slot = new TaskCompletionSource<(RingHello, Stream)>(TaskCreationOptions.RunContinuationsAsynchronously);
        return slot;
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try { socket = await _listener.AcceptSocketAsync(_stopping.Token); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            _ = HandleAsync(socket);
        }
    }

    private async Task HandleAsync(Socket socket)
    {
        socket.NoDelay = true;
        Stream stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
            timeout.CancelAfter(RingSocketProtocol.HandshakeTimeout);
            if (_security.Certificate is { } certificate)
            {
                var tls = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = tls;
                await tls.AuthenticateAsServerAsync(DataPortTls.ServerOptions(_security, certificate), timeout.Token);
            }
            var hello = await RingSocketProtocol.AcceptAsync(stream, _security.Secret, timeout.Token);
            lock (_gate)
            {
                var slot = SlotFor(hello.JobId, hello.Generation);
                // Counted before the hand-over: whoever awaits the connection sees it counted.
                Interlocked.Increment(ref _accepted);
                if (!slot.TrySetResult((hello, stream)))
                {
                    Interlocked.Decrement(ref _accepted);
                    throw new InvalidDataException($"job {hello.JobId} generation {hello.Generation} already has a successor connection");
                }
            }
        }
        catch (Exception e) when (e is IOException or InvalidDataException or AuthenticationException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            await stream.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        _listener.Stop();
        try { await _acceptLoop; } catch (OperationCanceledException) { }
        lock (_gate)
        {
            foreach (var slot in _slots.Values)
                if (!slot.TrySetCanceled() && slot.Task.IsCompletedSuccessfully) slot.Task.Result.Stream.Dispose();
            _slots.Clear();
        }
        _stopping.Dispose();
    }
}
