using Cluster.ParameterServer.Services;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.DataPort;

/// <summary>
/// The parameter server's data port (parameter_server.proto, "The data port"): a raw TCP
/// listener beside the gRPC one (<see cref="AuthenticatedListener"/>: TLS when the server has
/// certificates, every connection proving the cluster secret before it is read any further);
/// authenticated connections are served by <see cref="DataPortConnection"/>.
/// </summary>
public sealed class ParameterDataPort : IAsyncDisposable
{
    /// <summary>Connections served at once (each holds a thread of its own and about 2 MiB of buffers once authenticated).</summary>
    public const int ConnectionsMax = 1024;
    private readonly AuthenticatedListener _listener;

    private ParameterDataPort(AuthenticatedListener listener, string address) => (_listener, Address) = (listener, address);

    /// <summary>The address workers connect to, e.g. "http://127.0.0.1:40125" (https: TLS).</summary>
    public string Address { get; }

    /// <summary>Connections that proved the secret; for tests.</summary>
    public int Authenticated => _listener.Authenticated;

    /// <summary>Connections being served now (each until its peer closes it, or it breaks); for tests.</summary>
    public int Open => _listener.Open;

    /// <param name="regionDirectory">Where shared regions for workers on this host are made (null: none are offered).</param>
    /// <param name="regionBytesMax">Largest shared region one connection may ask for.</param>
    public static ParameterDataPort Start(string bindAddress, int port, string advertiseHost, ClusterSecurity security, ParameterTraffic traffic,
        Telemetry.TrafficObserver observer, string? regionDirectory = null, long regionBytesMax = SharedRegion.BytesMax)
    {
        // Regions a killed server left behind would hold their memory until the next reboot.
        if (regionDirectory is not null) SharedRegion.RemoveStale(regionDirectory);
        int regionMax = (int)Math.Clamp(regionBytesMax, 0, SharedRegion.BytesMax);
        var listener = new AuthenticatedListener(bindAddress, port, security, ParameterDataProtocol.Handshake, ConnectionsMax,
            (stream, stopping) => new DataPortConnection(stream, traffic, observer, regionDirectory, regionMax).ServeAsync(stopping),
            threadPerConnection: true);
        string host = advertiseHost.Contains(':') && !advertiseHost.StartsWith('[') ? $"[{advertiseHost}]" : advertiseHost;
        return new ParameterDataPort(listener, $"{ClusterEndpoints.Scheme(security)}://{host}:{listener.Port}");
    }

    public ValueTask DisposeAsync() => _listener.DisposeAsync();
}
