using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Membership;
using Cluster.Shared.Jobs;

namespace Cluster.Coordinator.Api;

/// <summary>A job as the JSON API shows it.</summary>
public sealed record JobView(
    string Id, string State, string? Error, JobSpecification Spec,
    DateTimeOffset SubmittedAt, DateTimeOffset? StartedAt, DateTimeOffset? FinishedAt,
    IReadOnlyList<string> Workers, IReadOnlyList<string> ParameterServers,
    LiveProgress? Progress, IReadOnlyList<EpochResult> Epochs, long RejectedGradients,
    IReadOnlyList<Leases.EpochAudit>? Audit = null, IReadOnlyList<int>? RemovedRanks = null)
{
    public static JobView From(JobRecord job, DateTimeOffset now)
    {
        var live = job.Live(now);
        return new JobView(
            job.Id, job.State.ToString().ToLowerInvariant(), job.Error, job.Spec,
            job.SubmittedAt, job.StartedAt, job.FinishedAt, [.. job.Ranks], [.. job.ParameterServers],
            live is { } l ? new LiveProgress(l.Epoch, job.Spec.Epochs, l.StepsDone, l.StepsTotal, l.RecentLoss, l.SamplesPerSecond) : null,
            [.. job.Results], job.RejectedGradients,
            job.Leases is { } leases ? [.. leases.Audits()] : null,
            job.Spec.Scheme == "ps" ? [.. job.RemovedRanks.Order()] : null);
    }
}

/// <summary>Where a running job is: 0-based epoch, steps done by the slowest rank, recent loss and throughput.</summary>
public sealed record LiveProgress(int Epoch, int Epochs, int StepsDone, int StepsTotal, double Loss, double SamplesPerSecond);

/// <summary>The cluster's members as the JSON API shows them.</summary>
public sealed record ClusterView(IReadOnlyList<WorkerView> Workers, IReadOnlyList<ParameterServerMember> ParameterServers)
{
    public static ClusterView From(MemberRegistry members) => new(
        [.. members.Workers.Select(w => new WorkerView(w.Id, w.Host, w.Device, w.ProcessId, w.Alive ? (w.JobId is null ? "idle" : "training") : "dead", w.JobId, w.LastHeartbeat))],
        [.. members.Servers]);
}

public sealed record WorkerView(string Id, string Host, string Device, int ProcessId, string State, string? JobId, DateTimeOffset LastHeartbeat);
