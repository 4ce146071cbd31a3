using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Cluster.ParameterServer.Services;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.DataPort;

/// <summary>
/// The parameter server's data port (parameter_server.proto, "The data port"): a raw TCP
/// listener beside the gRPC one, TLS when the server has certificates (mutual under --mtls),
/// every connection proving the cluster secret before it is read any further. Connections that
/// fail the handshake are closed without a frame; the rest are served by
/// <see cref="DataPortConnection"/>.
/// </summary>
public sealed class ParameterDataPort : IAsyncDisposable
{
    /// <summary>Connections served at once (each holds about 2 MiB of buffers once authenticated).</summary>
    public const int ConnectionsMax = 1024;
    private readonly TcpListener _listener;
    private readonly ClusterSecurity _security;
    private readonly ParameterTraffic _traffic;
    private readonly Telemetry.TrafficObserver _observer;
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<Stream, Task> _connections = new();
    private readonly Task _acceptLoop;
    private readonly string? _regionDirectory;
    private readonly int _regionBytesMax;
    private int _authenticated;

    private ParameterDataPort(TcpListener listener, ClusterSecurity security, ParameterTraffic traffic, Telemetry.TrafficObserver observer, string address,
        string? regionDirectory, int regionBytesMax)
    {
        (_listener, _security, _traffic, _observer, Address) = (listener, security, traffic, observer, address);
        (_regionDirectory, _regionBytesMax) = (regionDirectory, regionBytesMax);
        _acceptLoop = AcceptLoopAsync();
    }

    /// <summary>The address workers connect to, e.g. "http://127.0.0.1:40125" (https: TLS).</summary>
    public string Address { get; }

    /// <summary>Connections that proved the secret; for tests.</summary>
    public int Authenticated => _authenticated;

    /// <param name="regionDirectory">Where shared regions for workers on this host are made (null: none are offered).</param>
    /// <param name="regionBytesMax">Largest shared region one connection may ask for.</param>
    public static ParameterDataPort Start(string bindAddress, int port, string advertiseHost, ClusterSecurity security, ParameterTraffic traffic,
        Telemetry.TrafficObserver observer, string? regionDirectory = null, long regionBytesMax = SharedRegion.BytesMax)
    {
        // Regions a killed server left behind would hold their memory until the next reboot.
        if (regionDirectory is not null) SharedRegion.RemoveStale(regionDirectory);
        var listener = new TcpListener(IPAddress.Parse(bindAddress), port);
        listener.Start();
        int boundPort = ((IPEndPoint)listener.LocalEndpoint).Port;
        string host = advertiseHost.Contains(':') && !advertiseHost.StartsWith('[') ? $"[{advertiseHost}]" : advertiseHost;
        return new ParameterDataPort(listener, security, traffic, observer, $"{ClusterEndpoints.Scheme(security)}://{host}:{boundPort}",
            regionDirectory, (int)Math.Clamp(regionBytesMax, 0, SharedRegion.BytesMax));
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try { socket = await _listener.AcceptSocketAsync(_stopping.Token); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            if (_connections.Count >= ConnectionsMax)
            {
                socket.Dispose();
                continue;
            }
            socket.NoDelay = true;
            var stream = new NetworkStream(socket, ownsSocket: true);
            var served = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _connections[stream] = served.Task;
            _ = ServeAsync(stream).ContinueWith(_ => { _connections.TryRemove(stream, out var _); served.SetResult(); }, TaskScheduler.Default);
        }
    }

    private async Task ServeAsync(NetworkStream network)
    {
        Stream stream = network;
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
                await ParameterDataProtocol.Handshake.AcceptAsync(stream, _security.Secret, timeout.Token);
            }
            Interlocked.Increment(ref _authenticated);
            await new DataPortConnection(stream, _traffic, _observer, _regionDirectory, _regionBytesMax).ServeAsync(_stopping.Token);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or AuthenticationException or OperationCanceledException
            or SocketException or ObjectDisposedException)
        {
            // Refused, broken, or a frame against the rules: the connection is closed; the worker reconnects.
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
