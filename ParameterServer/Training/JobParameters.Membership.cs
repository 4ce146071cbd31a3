namespace Cluster.ParameterServer.Training;

/// <summary>
/// Elastic BSP: the ranks whose pushes make up a step follow the job's live workers.
///
/// Rank r is a member of step t when it was there from the start (r below the initial world
/// size) or joined at a step at or before t, and was not removed at or before t. Step t is
/// applied once every member has completed its push of t: whole pushes only, so a rank's
/// gradient of a step is applied entirely or not at all (partitions are still applied one by
/// one and streamed to pulls as each one is done). A rank removed (declared dead by the
/// coordinator, or leaving) while its push of the current step is complete stays a member of
/// that step; one removed with a partial push loses it, and the step goes on without it. A
/// joining rank becomes a member at a step boundary that has not been passed. When no rank is
/// a member of the current step but a joiner waits for a later one, the step passes empty.
///
/// The server records which ranks made up each applied step (the last
/// <see cref="AppliedStepsKept"/>); pulls send them so that the coordinator's lease table
/// acknowledges exactly the shards that were applied. A step whose members pushed no samples
/// at all moves no weight (not even by momentum or weight decay); its version still counts.
/// </summary>
public sealed partial class JobParameters
{
    /// <summary>Applied steps whose ranks are kept for pulls to report.</summary>
    public const int AppliedStepsKept = 16;

    private readonly Dictionary<int, long> _joinSteps = [];
    private readonly Dictionary<int, long> _leaveSteps = [];
    private readonly Dictionary<long, int[]> _appliedRanks = [];
    private bool _stepQueued;
    private int _capacityWanted;

    /// <summary>Whether <paramref name="rank"/>'s push counts in step <paramref name="step"/>. Call under the lock.</summary>
    private bool IsMember(int rank, long step)
    {
        if (rank < 0 || rank >= _ranks.Length) return false;
        if (_joinSteps.TryGetValue(rank, out long from) && from > step) return false;
        return !(_leaveSteps.TryGetValue(rank, out long until) && step >= until);
    }

    /// <summary>The ranks that are members of <paramref name="step"/>, in rank order.</summary>
    public IReadOnlyList<int> Members(long step)
    {
        lock (_gate) return MembersOf(step);
    }

    private List<int> MembersOf(long step)
    {
        var members = new List<int>();
        for (int rank = 0; rank < _ranks.Length; rank++)
            if (IsMember(rank, step)) members.Add(rank);
        return members;
    }

    /// <summary>The applied steps among the last <paramref name="count"/> up to <paramref name="throughStep"/>, with the ranks that made them up.</summary>
    public IReadOnlyList<(long Step, int[] Ranks)> AppliedSteps(long throughStep, int count = AppliedStepsKept)
    {
        lock (_gate)
        {
            var steps = new List<(long, int[])>();
            for (long step = Math.Max(0, throughStep - count + 1); step <= throughStep; step++)
                if (_appliedRanks.TryGetValue(step, out int[]? ranks)) steps.Add((step, ranks));
            return steps;
        }
    }

    /// <summary>
    /// Completes once every member's push of <paramref name="step"/> is complete (the step is
    /// queued to be applied, or already applied; BSP only): from then on
    /// <see cref="AppliedSteps"/> through <paramref name="step"/> is final, though the step's
    /// partitions may not be applied yet.
    /// </summary>
    public Task WaitForStepCompleteAsync(long step, CancellationToken cancellationToken) =>
        WaitUntilAsync(static (job, step) => job.Version > step || (job.Version == step && job._stepQueued), step, cancellationToken);

    /// <summary>
    /// Removes a rank from the barrier; returns the first step it is no longer a member of
    /// (the current one, unless its push of it was already complete), or null when it was
    /// not a member.
    /// </summary>
    public long? RemoveRank(int rank)
    {
        lock (_gate)
        {
            if (rank < 0 || rank >= _ranks.Length || _leaveSteps.ContainsKey(rank)) return null;
            var push = _ranks[rank];
            bool complete = IsMember(rank, Version) && push.Step == Version && push.Delivered == PartitionCount;
            long until = complete || (_stepQueued && IsMember(rank, Version)) ? Version + 1 : Version;
            if (until == Version)
            {
                // Its partial push is discarded: no partition of it was applied (whole pushes only).
                push.Delivered = 0;
                push.Step = -1;
                push.Rejected = false;
                push.Open = false;
            }
            _leaveSteps[rank] = until;
            EnqueueIfStepComplete();
            return until;
        }
    }

    /// <summary>
    /// A joining rank becomes a member from <paramref name="fromStep"/>. Refused (returns the
    /// current version) when that step boundary has passed: the caller asks again with a later one.
    /// </summary>
    public (bool Joined, long Version) JoinRank(int rank, long fromStep)
    {
        lock (_gate)
        {
            if (rank < 0 || rank >= Shared.Jobs.JobSpecification.WorkersMax)
                throw new PushRejectedException($"rank: {rank} is out of range; expected 0 to {Shared.Jobs.JobSpecification.WorkersMax - 1}");
            if (_leaveSteps.ContainsKey(rank))
                throw new PushRejectedException($"rank: {rank} was removed from job {JobId}; a joining worker needs a new rank");
            if (rank < _ranks.Length && !_joinSteps.ContainsKey(rank))
                throw new PushRejectedException($"rank: {rank} is already a member of job {JobId}");
            if (_joinSteps.TryGetValue(rank, out long joined) && joined <= Version && _ranks[rank].Step == Version)
                return (joined <= fromStep, Version); // it already pushes: its membership stands
            if (fromStep < Version || (fromStep == Version && _stepQueued)) return (false, Version);
            _joinSteps[rank] = fromStep;
            _capacityWanted = Math.Max(_capacityWanted, rank + 1);
            if (!_stepQueued) GrowToWanted();
            EnqueueIfStepComplete();
            return (true, Version);
        }
    }

    /// <summary>Under the lock, from the applier that finished the step, after VersionReached: grow for joiners and see whether the next can go.</summary>
    private void OnStepApplied()
    {
        GrowToWanted();
        EnqueueIfStepComplete();
    }

    /// <summary>
    /// Queues every partition of the current step once each member's push is complete, and wakes
    /// the appliers, or leaves them to the caller (<see cref="Received"/>). Call under the lock.
    /// </summary>
    private void EnqueueIfStepComplete(bool callerApplies = false)
    {
        // SSP and ASP apply each push on its own as it completes (JobParameters.Async.cs): no step barrier.
        if (_stepQueued || _reachingVersion || IsAsync || _closed) return;
        var members = MembersOf(Version);
        if (members.Count == 0)
        {
            bool joinerWaits = _joinSteps.Any(j => j.Value > Version && !_leaveSteps.ContainsKey(j.Key));
            if (!joinerWaits) return;
        }
        long samples = 0;
        foreach (int rank in members)
        {
            var push = _ranks[rank];
            if (push.Step != Version || push.Delivered < PartitionCount) return;
            samples += _aggregator.SampleCount(rank);
        }
        _stepQueued = true;
        _appliedRanks[Version] = [.. members];
        _appliedRanks.Remove(Version - AppliedStepsKept);
        SignalProgress();
        for (int p = 0; p < PartitionCount; p++)
        {
            for (int rank = 0; rank < _ranks.Length; rank++)
                if (samples == 0 || !members.Contains(rank)) _excluded[p][rank] = true;
            _ready.Enqueue(p);
        }
        if (callerApplies) _appliersOwed = true;
        else WakeAppliers(ApplierCount);
    }

    /// <summary>Makes room for joined ranks; only between steps, when no partition is being applied.</summary>
    private void GrowToWanted()
    {
        if (_capacityWanted <= _ranks.Length) return;
        _aggregator.Grow(_capacityWanted, ElementCount);
        int old = _ranks.Length;
        Array.Resize(ref _ranks, _capacityWanted);
        for (int rank = old; rank < _ranks.Length; rank++) _ranks[rank] = new RankPush();
        for (int p = 0; p < PartitionCount; p++) Array.Resize(ref _excluded[p], _capacityWanted);
    }

    private void CheckMember(int rank, long step)
    {
        if (IsMember(rank, step)) return;
        string why = _leaveSteps.TryGetValue(rank, out long until) ? $"it was removed from step {until} on" : $"it joins at step {_joinSteps.GetValueOrDefault(rank)}";
        throw new PushRejectedException($"rank: {rank} is not a member of step {step} of job {JobId}; {why}");
    }
}
