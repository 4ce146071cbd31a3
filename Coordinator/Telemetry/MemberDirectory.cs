using System.Collections.Concurrent;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// What the coordinator knows about its members beyond membership: each worker's HTTP
/// listener and device, each parameter server's HTTP side and its latest /stats. Filled from
/// the registration calls (see <see cref="CoordinatorInterceptor"/>) and by
/// <see cref="ServerStatsPoller"/>. Thread-safe.
/// </summary>
public sealed class MemberDirectory
{
    private readonly ConcurrentDictionary<string, WorkerEndpoint> _workers = new();
    private readonly ConcurrentDictionary<string, ServerEndpoint> _servers = new();

    public void AddWorker(string workerId, string httpUrl, string deviceDetail) =>
        _workers[workerId] = new WorkerEndpoint(httpUrl.Length == 0 ? null : httpUrl, deviceDetail);

    public WorkerEndpoint? Worker(string workerId) => _workers.GetValueOrDefault(workerId);

    public void AddServer(string address, string httpUrl) =>
        _servers.AddOrUpdate(address, _ => new ServerEndpoint(httpUrl.Length == 0 ? null : httpUrl), (_, old) => old with { HttpUrl = httpUrl.Length == 0 ? null : httpUrl });

    public ServerEndpoint? Server(string address) => _servers.GetValueOrDefault(address);

    public IEnumerable<KeyValuePair<string, ServerEndpoint>> Servers => _servers;

    /// <summary>Records the outcome of polling a server's /stats.</summary>
    public void Polled(string address, ServerStatsSnapshot? stats, string? error, DateTimeOffset now) =>
        _servers.AddOrUpdate(address, _ => new ServerEndpoint(null),
            (_, old) => stats is null ? old with { LastError = error } : old with { Stats = stats, LastSeen = now, LastError = null });
}

/// <summary>A worker's HTTP listener (null when it has none) and device description.</summary>
public sealed record WorkerEndpoint(string? HttpUrl, string DeviceDetail);

/// <summary>A parameter server's HTTP side and what its last /stats said.</summary>
public sealed record ServerEndpoint(string? HttpUrl)
{
    public ServerStatsSnapshot? Stats { get; init; }
    public DateTimeOffset? LastSeen { get; init; }
    public string? LastError { get; init; }
}

/// <summary>A parameter server's GET /stats answer (see ParameterServer/Telemetry/TelemetryEndpoints.cs).</summary>
public sealed record ServerStatsSnapshot(int ProcessId, IReadOnlyList<ServerJobSnapshot> Jobs);

public sealed record ServerJobSnapshot(
    string JobId, bool Held, long Version, long Pushes, long RefusedPushes, long RejectedGradients, long Pulls, long PushedBytes, long PulledBytes);
