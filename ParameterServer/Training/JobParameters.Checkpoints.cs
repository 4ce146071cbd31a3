using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.ParameterServer.Training;

/// <summary>Snapshots of a job's state for checkpoints, and a job restored from one.</summary>
public sealed partial class JobParameters
{
    /// <summary>
    /// Called on the thread that applied a step's last partition each time every partition has
    /// reached a new version, with that version; the state does not move while it runs (the next
    /// step is queued only after it returns).
    /// </summary>
    public Action<JobParameters, long>? VersionReached { get; set; }

    /// <summary>Whether parts of the vector have their own optimizers (parameter groups), which snapshots do not hold.</summary>
    public bool HasParameterGroups => _optimizer is GroupedOptimizer;

    /// <summary>The update rule's settings, as the job was created with.</summary>
    public OptimizerSettings OptimizerSettings { get; }

    /// <summary>
    /// A copy of the weights and the optimizer state at <see cref="Version"/>. Only consistent
    /// when taken from <see cref="VersionReached"/> or while no push is in flight.
    /// </summary>
    public JobSnapshot Snapshot()
    {
        var state = _optimizer.StateBuffers.Select(b => (b.Name, (float[])b.Values.Clone())).ToList();
        lock (_gate)
            return new JobSnapshot(JobId, Version, WorldSize, Layout, RangeStart, PartitionElements, OptimizerSettings,
                (float[])_weights.Clone(), state, RejectedGradients)
            {
                AppliedSteps = AppliedSteps(Version - 1),
                JoinSteps = new Dictionary<int, long>(_joinSteps),
                LeaveSteps = new Dictionary<int, long>(_leaveSteps),
            };
    }

    /// <summary>A job at the snapshot's version, with its weights and optimizer state.</summary>
    public static JobParameters Restore(JobSnapshot snapshot)
    {
        var job = new JobParameters(snapshot.JobId, snapshot.WorldSize, snapshot.Layout, snapshot.Optimizer, (float[])snapshot.Weights.Clone(),
            snapshot.RangeStart, snapshot.PartitionElements);
        var buffers = job._optimizer.StateBuffers;
        foreach (var (name, values) in snapshot.OptimizerState)
        {
            var buffer = buffers.FirstOrDefault(b => b.Name == name).Values
                ?? throw new ArgumentException($"optimizer state '{name}': optimizer {snapshot.Optimizer.Kind} has no such buffer");
            if (values.Length != buffer.Length)
                throw new ArgumentException($"optimizer state '{name}': {values.Length} elements; expected {buffer.Length}");
            values.CopyTo(buffer, 0);
        }
        foreach (var (name, _) in buffers)
            if (!snapshot.OptimizerState.Any(s => s.Name == name))
                throw new ArgumentException($"optimizer state '{name}': missing from the snapshot of job {snapshot.JobId}");
        lock (job._gate)
        {
            job.Version = snapshot.Version;
            Array.Fill(job._partitionVersions, snapshot.Version);
            job.RejectedGradients = snapshot.RejectedGradients;
            // Pulls of the restored version report who made up the steps before it, as the lost server's pulls would have.
            foreach (var (step, ranks) in snapshot.AppliedSteps) job._appliedRanks[step] = ranks;
            // The barrier's members as they were: ranks that joined or were removed before the checkpoint.
            foreach (var (rank, step) in snapshot.JoinSteps) job._joinSteps[rank] = step;
            // A rank removed after its push of the snapshot's step was complete: that push is not in the snapshot.
            foreach (var (rank, step) in snapshot.LeaveSteps) job._leaveSteps[rank] = Math.Min(step, snapshot.Version);
            job._capacityWanted = snapshot.JoinSteps.Count == 0 ? 0 : snapshot.JoinSteps.Keys.Max() + 1;
            job.GrowToWanted();
        }
        return job;
    }
}

/// <summary>Everything a parameter server needs to continue a job's key range from <paramref name="Version"/>.</summary>
public sealed record JobSnapshot(
    string JobId, long Version, int WorldSize, TensorLayout Layout, long RangeStart, int PartitionElements, OptimizerSettings Optimizer,
    float[] Weights, IReadOnlyList<(string Name, float[] Values)> OptimizerState, long RejectedGradients)
{
    /// <summary>The ranks behind the last applied steps (up to <see cref="JobParameters.AppliedStepsKept"/>), for the coordinator's lease table after a restore.</summary>
    public IReadOnlyList<(long Step, int[] Ranks)> AppliedSteps { get; init; } = [];
    /// <summary>Ranks that joined the barrier, with the step they are members from.</summary>
    public IReadOnlyDictionary<int, long> JoinSteps { get; init; } = new Dictionary<int, long>();
    /// <summary>Ranks removed from the barrier, with the first step they are no longer members of.</summary>
    public IReadOnlyDictionary<int, long> LeaveSteps { get; init; } = new Dictionary<int, long>();
}
