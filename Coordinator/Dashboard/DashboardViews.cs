using Cluster.Coordinator.Api;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Membership;
using Cluster.Coordinator.Telemetry;

namespace Cluster.Coordinator.Dashboard;

/// <summary>The coordinator's own addresses, known once it listens.</summary>
public sealed class CoordinatorInfo
{
    public string GrpcUrl { get; set; } = "";
    public string HttpUrl { get; set; } = "";
    public DateTimeOffset StartedAt { get; set; }
}

/// <summary>Every member of the cluster with what the dashboard shows of it.</summary>
public sealed record MembersView(CoordinatorView Coordinator, IReadOnlyList<WorkerMemberView> Workers, IReadOnlyList<ServerMemberView> ParameterServers)
{
    public static MembersView From(IReadOnlyDictionary<string, JobRecord> jobs, MemberRegistry registry, MemberDirectory directory, CoordinatorInfo info, DateTimeOffset now) => new(
        new CoordinatorView(info.GrpcUrl, info.HttpUrl, info.StartedAt, Environment.ProcessId, Environment.MachineName),
        [.. registry.Workers.Select(w => WorkerMemberView.From(w, jobs, directory.Worker(w.Id), now))],
        [.. registry.Servers.Select(s => ServerMemberView.From(s, directory.Server(s.Address), now))]);
}

public sealed record CoordinatorView(string GrpcUrl, string HttpUrl, DateTimeOffset StartedAt, int ProcessId, string Host);

/// <summary>A worker: where it runs, on what, what it does, and when it was last heard from.</summary>
public sealed record WorkerMemberView(
    string Id, string Host, string Device, string DeviceDetail, int ProcessId, string State, string? JobId, int? Rank,
    DateTimeOffset LastHeartbeat, double HeartbeatAgeSeconds, string? HttpUrl)
{
    public static WorkerMemberView From(WorkerMember worker, IReadOnlyDictionary<string, JobRecord> jobs, WorkerEndpoint? endpoint, DateTimeOffset now)
    {
        int? rank = worker.JobId is { } id && jobs.TryGetValue(id, out var job) && job.Ranks.IndexOf(worker.Id) is >= 0 and var r ? r : null;
        string state = worker.Alive ? (worker.JobId is null ? "idle" : "training") : "dead";
        return new WorkerMemberView(worker.Id, worker.Host, worker.Device, endpoint?.DeviceDetail ?? "", worker.ProcessId, state, worker.JobId, rank,
            worker.LastHeartbeat, Math.Max(0, (now - worker.LastHeartbeat).TotalSeconds), endpoint?.HttpUrl);
    }
}

/// <summary>A parameter server: "up" when its last /stats poll answered, "unreachable" when it did not, "unknown" before the first poll.</summary>
public sealed record ServerMemberView(
    string Id, string Address, string? HttpUrl, string State, DateTimeOffset RegisteredAt, DateTimeOffset? LastSeen, string? LastError,
    int JobsHeld, long PushedBytes, long PulledBytes, long RejectedGradients)
{
    public static ServerMemberView From(ParameterServerMember server, ServerEndpoint? endpoint, DateTimeOffset now)
    {
        var jobs = endpoint?.Stats?.Jobs ?? [];
        string state = endpoint?.LastError is not null ? "unreachable" : endpoint?.LastSeen is null ? "unknown" : "up";
        return new ServerMemberView(server.Id, server.Address, endpoint?.HttpUrl, state, server.RegisteredAt, endpoint?.LastSeen, endpoint?.LastError,
            jobs.Count(j => j.Held), jobs.Sum(j => j.PushedBytes), jobs.Sum(j => j.PulledBytes), jobs.Sum(j => j.RejectedGradients));
    }
}

/// <summary>A job's step telemetry: per-rank phase times, the slowest rank, the loss curve, rejected gradients.</summary>
public sealed record JobTelemetryView(
    string JobId, int? SlowestRank, string? SlowestWorker, IReadOnlyList<RankView> Ranks, IReadOnlyList<LossPoint> Loss,
    long RejectedGradients, long RefusedPushes)
{
    public static JobTelemetryView From(JobRecord job, JobTelemetry? telemetry, MemberDirectory directory)
    {
        var (ranks, slowest, loss) = telemetry?.Snapshot() ?? ([], null, []);
        var stats = job.ParameterServers.Select(a => directory.Server(a)?.Stats?.Jobs.FirstOrDefault(j => j.JobId == job.Id)).OfType<ServerJobSnapshot>().ToList();
        return new JobTelemetryView(
            job.Id, slowest, slowest is { } s && s < job.Ranks.Count ? job.Ranks[s] : null,
            [.. ranks.Select(r => RankView.From(r, r.Rank < job.Ranks.Count ? job.Ranks[r.Rank] : "", r.Rank == slowest))],
            loss, stats.Sum(j => j.RejectedGradients), stats.Sum(j => j.RefusedPushes));
    }
}

/// <summary>One rank's mean milliseconds per step in each phase; <c>Slowest</c> marks the rank that holds the others back.</summary>
public sealed record RankView(
    int Rank, string WorkerId, long Steps, double ComputeMillis, double PushMillis, double WaitMillis, double PullMillis,
    double StepMillis, double BusyMillis, bool Slowest)
{
    public static RankView From(RankPhases r, string workerId, bool slowest) =>
        new(r.Rank, workerId, r.Steps, r.ComputeMillis, r.PushMillis, r.WaitMillis, r.PullMillis, r.StepMillis, r.BusyMillis, slowest);
}

/// <summary>What GET /api/events streams: the cluster and every job.</summary>
public sealed record OverviewEvent(MembersView Members, IReadOnlyList<JobView> Jobs);

/// <summary>What GET /api/jobs/{id}/events streams: the job and its step telemetry.</summary>
public sealed record JobEvent(JobView Job, JobTelemetryView Telemetry);
