namespace Cluster.Coordinator.Membership;

/// <summary>A registered worker process.</summary>
public sealed class WorkerMember(string id, string host, string device, int processId, DateTimeOffset now)
{
    public string Id { get; } = id;
    public string Host { get; } = host;
    public string Device { get; } = device;
    public int ProcessId { get; } = processId;
    public DateTimeOffset LastHeartbeat { get; set; } = now;
    /// <summary>Job the worker trains, or null when idle.</summary>
    public string? JobId { get; set; }
    public bool Alive { get; set; } = true;
}

/// <summary>A registered parameter server.</summary>
public sealed record ParameterServerMember(string Id, string Address, DateTimeOffset RegisteredAt);

/// <summary>Who is in the cluster. Not thread-safe: <see cref="Jobs.JobBoard"/> guards it.</summary>
public sealed class MemberRegistry
{
    private readonly Dictionary<string, WorkerMember> _workers = [];
    private readonly List<ParameterServerMember> _servers = [];
    private int _nextWorker, _nextServer;

    public IReadOnlyCollection<WorkerMember> Workers => _workers.Values;
    public IReadOnlyList<ParameterServerMember> Servers => _servers;

    public WorkerMember AddWorker(string host, string device, int processId, DateTimeOffset now)
    {
        var worker = new WorkerMember($"worker-{++_nextWorker}", host, device, processId, now);
        _workers.Add(worker.Id, worker);
        return worker;
    }

    public ParameterServerMember AddServer(string address, DateTimeOffset now)
    {
        var existing = _servers.FirstOrDefault(s => s.Address == address);
        if (existing is not null) return existing;
        var server = new ParameterServerMember($"ps-{++_nextServer}", address, now);
        _servers.Add(server);
        return server;
    }

    public WorkerMember? FindWorker(string id) => _workers.GetValueOrDefault(id);

    /// <summary>Live workers silent for longer than <paramref name="timeout"/>, in registration order.</summary>
    public List<WorkerMember> SilentWorkers(DateTimeOffset now, TimeSpan timeout) =>
        [.. _workers.Values.Where(w => w.Alive && now - w.LastHeartbeat > timeout)];
}
