using Cluster.Coordinator.Leases;
using Cluster.Protos;

namespace Cluster.Coordinator.Jobs;

/// <summary>A parameter-server job's shard leases, its elastic set of ranks, and who evaluates each epoch.</summary>
public sealed partial class JobRecord
{
    /// <summary>Scheme "ps": the lease table, made at the first lease request (it needs the training-set size).</summary>
    public ShardLeaseTable? Leases { get; private set; }

    /// <summary>Ranks removed from a "ps" job (lost or left); their samples went back to the pool.</summary>
    public HashSet<int> RemovedRanks { get; } = [];

    /// <summary>The most ranks a "ps" job may have alive at once (it admits joining workers up to this).</summary>
    public int LiveRanksMax => Math.Max(Spec.Workers, Spec.MaxWorkers);

    /// <summary>Ranks of a "ps" job that are still training.</summary>
    public int LiveRankCount => Ranks.Count - RemovedRanks.Count;

    /// <summary>Why a report handed in with a lease of <paramref name="leaseStep"/> is refused; null when it is not.</summary>
    public string? ReportError(long leaseStep, Protos.AppliedStep step)
    {
        // A worker reports steps just before the one it leases, and ranks of this job.
        long earliest = leaseStep - ShardLeaseTable.AppliedStepsKept;
        if (step.Step >= leaseStep || step.Step < earliest)
            return $"applied.step: {step.Step}; expected {earliest} to {leaseStep - 1} for a lease of step {leaseStep}";
        if (step.Ranks.Any(rank => rank < 0 || rank >= Ranks.Count))
            return $"applied.ranks: [{string.Join(", ", step.Ranks)}] of step {step.Step}; expected ranks 0 to {Ranks.Count - 1}";
        return null;
    }

    public LeaseShardReply Lease(LeaseShardRequest request, DateTimeOffset now)
    {
        if (request.Epoch < -1 || request.Epoch > Spec.Epochs)
            throw new ArgumentException($"epoch: {request.Epoch} is out of range; expected -1 (joining) to {Spec.Epochs}");
        foreach (var step in request.Applied?.Steps ?? [])
            if (ReportError(request.Step, step) is { } error) throw new ArgumentException(error);
        var table = LeaseTable(request.Epoch < 0 ? 0 : Math.Min(request.Epoch, Spec.Epochs - 1), request.TrainSampleCount, now);
        var applied = request.Applied?.Steps.Select(s => new Leases.AppliedStep(s.Step, [.. s.Ranks])) ?? [];
        var grant = table.Lease(request.Rank, request.Epoch, request.Step, applied, request.ServersRewound, request.LeaseGeneration);
        if (grant.Epoch >= 0)
        {
            var progress = Epoch(grant.Epoch);
            progress.StartedAt ??= now;
            if (grant.Kind == LeaseKind.EpochDone) progress.TrainedAt ??= now;
        }
        var reply = new LeaseShardReply
        {
            Kind = (LeaseShardReply.Types.Kind)(int)grant.Kind,
            Epoch = grant.Epoch,
            EvaluationPart = grant.EvaluationPart,
            EvaluationParts = grant.EvaluationParts,
            PlannedSteps = (table.SampleCount + Spec.Workers * Spec.BatchSize - 1) / (Spec.Workers * Spec.BatchSize),
            LeaseGeneration = grant.Generation,
        };
        reply.SampleIndices.AddRange(grant.SampleIndices);
        return reply;
    }

    /// <summary>Removes a rank from a "ps" job; returns false when it was already removed.</summary>
    public bool RemoveRank(int rank, DateTimeOffset now)
    {
        if (!RemovedRanks.Add(rank)) return false;
        Leases?.RemoveRank(rank);
        // The live view shows the slowest live rank, not where the lost one stopped.
        foreach (var progress in _epochs.Values) progress.StepsDone.Remove(rank);
        // Epochs waiting for this rank's evaluation are complete without its part.
        foreach (int epoch in _epochs.Keys.Order().ToList()) TryFinishEpoch(epoch, now);
        return true;
    }

    /// <summary>
    /// Whether a rank has nothing left to do in the job: every epoch is trained and the rank has
    /// reported its part of the last evaluation (or has none). Such a rank may exit before the
    /// others finish evaluating without counting as lost.
    /// </summary>
    public bool IsDoneWith(int rank)
    {
        if (Leases is not { } leases || leases.CurrentEpoch < Spec.Epochs) return false;
        int last = Spec.Epochs - 1;
        return !leases.Evaluators(last).Contains(rank) || (_epochs.TryGetValue(last, out var progress) && progress.EvaluatedRanks.Contains(rank));
    }

    /// <summary>Adds a joining rank to a running "ps" job; returns its rank.</summary>
    public int AddRank(string workerId)
    {
        Ranks.Add(workerId);
        int rank = Ranks.Count - 1;
        Leases?.AddRank(rank);
        return rank;
    }

    /// <summary>Ranks whose evaluations make up the epoch's test metrics, less those lost before they reported.</summary>
    private int EvaluatorCount(int epoch, HashSet<int> evaluated)
    {
        if (Leases is null) return LiveWorkerCount;
        return Leases.Evaluators(epoch).Count(rank => evaluated.Contains(rank) || !RemovedRanks.Contains(rank));
    }

    private ShardLeaseTable LeaseTable(int epoch, int trainSampleCount, DateTimeOffset now)
    {
        if (Leases is not null)
        {
            // The same checks as a plan: every rank agrees on the training-set size.
            if (trainSampleCount != Leases.SampleCount)
                throw new ArgumentException($"train_sample_count: {trainSampleCount} differs from the {Leases.SampleCount} other ranks loaded; check every worker has the same dataset");
            return Leases;
        }
        Plan(epoch, trainSampleCount, now);
        Leases = new ShardLeaseTable(trainSampleCount, Spec.Seed, Spec.Workers, Spec.BatchSize, Spec.Epochs);
        for (int rank = Spec.Workers; rank < Ranks.Count; rank++) Leases.AddRank(rank);
        foreach (int rank in RemovedRanks) Leases.RemoveRank(rank);
        return Leases;
    }
}
