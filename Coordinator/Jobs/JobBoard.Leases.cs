using System.Threading.Channels;
using Cluster.Coordinator.Membership;
using Cluster.Protos;

namespace Cluster.Coordinator.Jobs;

/// <summary>
/// The "ps" scheme's part of the board: shard leases, removing lost ranks instead of failing
/// the job (the parameter servers are told through <see cref="RemovedRanks"/>), and admitting
/// workers that start while a job runs.
/// </summary>
public sealed partial class JobBoard
{
    private readonly Channel<(JobRecord Job, int Rank)> _removedRanks = Channel.CreateUnbounded<(JobRecord, int)>();

    /// <summary>Ranks removed from running "ps" jobs, for telling their parameter servers to stop waiting for them.</summary>
    public ChannelReader<(JobRecord Job, int Rank)> RemovedRanks => _removedRanks.Reader;

    public LeaseShardReply Lease(LeaseShardRequest request)
    {
        lock (_gate)
        {
            // Every step's lease: its journal form (a trimmed copy of the request) is made only when it is kept.
            if (Recording) Record(new BoardEvent { Leased = JournalForm(request) });
            var job = RunningJob(request.JobId, request.Rank);
            if (job.Ring is not null)
                throw new InvalidOperationException($"job {job.Id} uses scheme '{job.Spec.Scheme}'; its workers call GetShard, not LeaseShard");
            var reply = job.Lease(request, Now);
            // Servers back from a checkpoint may have missed removals made after it: they are told again (removing is idempotent).
            if (request.ServersRewound && !Replaying)
                foreach (int rank in job.RemovedRanks.Order()) _removedRanks.Writer.TryWrite((job, rank));
            return reply;
        }
    }

    /// <summary>
    /// A lease request as the state file keeps it: without the reports of steps the job's lease
    /// table has already settled. Settling them again changes nothing, and they are most of a
    /// request's bytes (a worker hands in its last AppliedStepsKept steps every time). Only reports
    /// that pass the request's checks are left out, so that a refused request is refused again
    /// when it is replayed.
    /// </summary>
    private LeaseShardRequest JournalForm(LeaseShardRequest request)
    {
        if (request.Applied is not { Steps.Count: > 0 } applied || !_jobs.TryGetValue(request.JobId, out var job) || job.Leases is not { } table)
            return request;
        bool settled(AppliedStep step) => step.Step <= table.SettledThrough && job.ReportError(request.Step, step) is null;
        if (!applied.Steps.Any(settled)) return request;
        var kept = request.Clone();
        kept.Applied.Steps.Clear();
        kept.Applied.Steps.AddRange(applied.Steps.Where(step => !settled(step)));
        return kept;
    }

    /// <summary>An idle worker becomes the next rank of running "ps" job <paramref name="job"/>.</summary>
    private static int Join(JobRecord job, WorkerMember worker)
    {
        worker.JobId = job.Id;
        return job.AddRank(worker.Id);
    }

    /// <summary>A worker leaves a running "ps" job on its own: the same as losing it, without the wait.</summary>
    public bool Leave(string jobId, int rank)
    {
        lock (_gate)
        {
            Record(new BoardEvent { Left = new LeaveJobRequest { JobId = jobId, Rank = rank } });
            var job = RunningJob(jobId, rank);
            if (job.Spec.Scheme != "ps") return false;
            var worker = _members.FindWorker(job.Ranks[rank]);
            if (worker is not null && worker.JobId == job.Id) worker.JobId = null;
            RemoveFromPs(job, rank, $"rank {rank} left");
            return true;
        }
    }

    /// <summary>For ExpireWorkers: a "ps" job loses the rank instead of failing, unless it was its last.</summary>
    private bool TryRemoveFromPs(JobRecord job, WorkerMember worker, string lostMessage)
    {
        if (job.Spec.Scheme != "ps") return false;
        int rank = job.Ranks.IndexOf(worker.Id);
        // A rank that finished its part may exit while the others still evaluate: it is not lost.
        if (!job.IsDoneWith(rank)) RemoveFromPs(job, rank, lostMessage);
        return true;
    }

    private void RemoveFromPs(JobRecord job, int rank, string lostMessage)
    {
        if (!job.RemoveRank(rank, Now)) return;
        if (!Replaying) _removedRanks.Writer.TryWrite((job, rank));
        if (job.LiveRankCount == 0) End(job, JobState.Failed, lostMessage);
        else if (job.Results.Count == job.Spec.Epochs) End(job, JobState.Succeeded, null);
        else Schedule();
    }

    /// <summary>Whether a failure report comes from a rank the job already let go (its failure is not the job's).</summary>
    private static bool IsRemoved(JobRecord job, int rank) => job.RemovedRanks.Contains(rank);

    /// <summary>
    /// Idle workers join running "ps" jobs that have room (fewer live ranks than they may have)
    /// while no queued job waits for them.
    /// </summary>
    private void AdmitJoiners()
    {
        if (_queue.Count > 0) return;
        foreach (var job in _jobs.Values.Where(j => j.State == JobState.Running && j.Spec.Scheme == "ps").OrderBy(j => j.StartedAt))
        {
            if (job.Leases is { } leases && leases.CurrentEpoch >= job.Spec.Epochs) continue; // trained: only evaluations are left
            while (job.LiveRankCount < job.LiveRanksMax && _waiting.FirstOrDefault(w => w.Worker.Alive && w.Worker.JobId is null) is { Worker: not null } idle)
            {
                var (worker, reply) = idle;
                Record(new BoardEvent { RankJoined = new RankJoined { JobId = job.Id, WorkerId = worker.Id } });
                _waiting.RemoveAll(w => w.Worker == worker);
                int rank = Join(job, worker);
                var assignment = new Assignment { JobId = job.Id, Rank = rank, WorldSize = job.Spec.Workers, Spec = job.Spec.ToProto(), Join = true };
                assignment.ParameterServers.AddRange(job.ParameterServers);
                reply.TrySetResult(assignment);
            }
        }
    }
}
