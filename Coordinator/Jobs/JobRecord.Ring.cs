using Cluster.Coordinator.Rendezvous;
using Cluster.Shared.Sharding;

namespace Cluster.Coordinator.Jobs;

/// <summary>An allreduce job's ring and how its epochs are shared among the ranks still in it.</summary>
public sealed partial class JobRecord
{
    private readonly Dictionary<int, int[]> _planMembers = [];

    /// <summary>The ring of an allreduce job; null for other schemes.</summary>
    public RingRendezvous? Ring { get; set; }

    /// <summary>Ranks still training: all of them, less those the ring dropped.</summary>
    public int LiveWorkerCount => Ring?.LiveCount ?? Spec.Workers;

    /// <summary>
    /// Rank's shard of an epoch of a ring job: the epoch is planned for the ranks alive when its
    /// first shard is asked for, and a rank trains the slice of its place among them. (Ranks
    /// dropped during an epoch leave their remaining samples of that epoch untrained.)
    /// </summary>
    public (int[] SampleIndices, int[] StepOffsets) RingShard(int rank, int epoch, int trainSampleCount, DateTimeOffset now)
    {
        var ring = Ring ?? throw new InvalidOperationException($"job {Id} has no ring");
        if (!_planMembers.TryGetValue(epoch, out int[]? members))
        {
            var dropped = ring.DroppedRanks;
            members = [.. Enumerable.Range(0, Spec.Workers).Where(r => !dropped.Contains(r))];
            _planMembers[epoch] = members;
        }
        int place = Array.IndexOf(members, rank);
        if (place < 0) throw new InvalidOperationException($"job {Id}: rank {rank} was dropped from the ring before epoch {epoch}");
        var plan = Plan(epoch, trainSampleCount, now, members.Length);
        return plan.Shard(place);
    }

    private EpochPlan NewPlan(int epoch, int trainSampleCount, int workers) =>
        new(trainSampleCount, Spec.Seed, epoch, workers, Spec.BatchSize);
}
