using Cluster.Coordinator.Rendezvous;
using Cluster.Protos;

namespace Cluster.Coordinator.Jobs;

/// <summary>The allreduce scheme's part of the board: ring rendezvous, and dropping lost ranks instead of failing the job.</summary>
public sealed partial class JobBoard
{
    /// <summary>How long a ring re-formation waits for the previous members to rejoin.</summary>
    public TimeSpan RingJoinWindow { get; init; } = TimeSpan.FromSeconds(10);

    public Task<JoinRingReply> JoinRingAsync(JoinRingRequest request, TimeSpan wait, CancellationToken cancellationToken)
    {
        RingRendezvous ring;
        lock (_gate)
        {
            var job = RunningJob(request.JobId, request.Rank);
            ring = job.Ring ?? throw new InvalidOperationException($"job {job.Id} uses scheme '{job.Spec.Scheme}'; only allreduce jobs form rings");
        }
        return FailWhenEmptyAsync(ring, request, wait, cancellationToken);
    }

    private async Task<JoinRingReply> FailWhenEmptyAsync(RingRendezvous ring, JoinRingRequest request, TimeSpan wait, CancellationToken cancellationToken)
    {
        var reply = await ring.JoinAsync(request, wait, cancellationToken);
        lock (_gate)
            if (_jobs.TryGetValue(request.JobId, out var job)) ReleaseDropped(job);
        return reply;
    }

    /// <summary>Ranks the ring dropped stop counting as the job's workers; a job with none left fails.</summary>
    private void ReleaseDropped(JobRecord job)
    {
        if (job.Ring is not { } ring || job.IsFinished) return;
        foreach (int rank in ring.DroppedRanks)
        {
            var worker = _members.FindWorker(job.Ranks[rank]);
            if (worker is not null && worker.JobId == job.Id && !worker.Alive) worker.JobId = null;
        }
        if (ring.LiveCount == 0) End(job, JobState.Failed, "every worker of the ring was lost");
    }

    /// <summary>For ExpireWorkers: an allreduce job loses the rank instead of failing.</summary>
    private bool TryDropFromRing(JobRecord job, string workerId)
    {
        if (job.Ring is not { } ring) return false;
        ring.Drop(job.Ranks.IndexOf(workerId));
        ReleaseDropped(job);
        return true;
    }
}
