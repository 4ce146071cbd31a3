using Cluster.Coordinator.Leases;

namespace Cluster.Tests.Unit.Leases;

/// <summary>
/// The parameter server's elastic BSP barrier as the simulation sees it: rank r is a member of
/// step t when it joined at or before t and was not removed before t; step t is applied once
/// every member has completed its push of t. A member removed while its push of the current
/// step is complete stays in that step; one removed with a partial push loses it. The server
/// records which ranks made up each step and counts every applied sample (the ground truth).
/// </summary>
public sealed class SimulatedServer
{
    private readonly Dictionary<int, long> _joinStep = [];
    private readonly Dictionary<int, long> _leaveStep = [];
    private readonly Dictionary<int, Push> _pushes = [];
    private readonly Dictionary<long, int[]> _contributors = [];
    private readonly HashSet<(int Rank, long Step)> _applied = [];

    public long Version { get; private set; }
    public Dictionary<int, int[]> Applied { get; } = [];
    public bool DuplicateApplied { get; private set; }
    public int SampleCount { get; set; }

    public bool IsMember(int rank, long step) =>
        _joinStep.TryGetValue(rank, out long from) && from <= step && !(_leaveStep.TryGetValue(rank, out long until) && step >= until);

    public void Join(int rank, long fromStep)
    {
        _joinStep[rank] = fromStep;
        TryApply();
    }

    public int[]? Contributors(long step) => _contributors.GetValueOrDefault(step);

    /// <summary>First half of a push; false when refused (not a member, or not the current step).</summary>
    public bool BeginPush(int rank, long step, int epoch, int[] samples)
    {
        if (!IsMember(rank, step) || step != Version) return false;
        if (_pushes.TryGetValue(rank, out var existing) && existing.Step == step && existing.Complete) return true; // a duplicate
        _pushes[rank] = new Push(step, epoch, samples);
        return true;
    }

    public bool CompletePush(int rank, long step)
    {
        if (!IsMember(rank, step) || step != Version || !_pushes.TryGetValue(rank, out var push) || push.Step != step) return false;
        push.Complete = true;
        TryApply();
        return true;
    }

    public void Remove(int rank)
    {
        if (_leaveStep.ContainsKey(rank)) return;
        bool complete = _pushes.TryGetValue(rank, out var push) && push.Step == Version && push.Complete;
        _leaveStep[rank] = complete ? Version + 1 : Version;
        if (!complete) _pushes.Remove(rank);
        TryApply();
    }

    private void TryApply()
    {
        var members = _joinStep.Keys.Where(r => IsMember(r, Version)).Order().ToArray();
        // A step nobody is a member of (every member was lost before a joiner's first step) passes empty.
        bool joinerWaits = _joinStep.Any(j => j.Value > Version && !_leaveStep.ContainsKey(j.Key));
        if (members.Length == 0 && !joinerWaits) return;
        if (!members.All(r => _pushes.TryGetValue(r, out var p) && p.Step == Version && p.Complete)) return;
        foreach (int rank in members)
        {
            var push = _pushes[rank];
            if (!_applied.Add((rank, Version))) DuplicateApplied = true;
            if (push.Samples.Length == 0) continue;
            if (!Applied.TryGetValue(push.Epoch, out var counts)) Applied[push.Epoch] = counts = new int[SampleCount];
            foreach (int sample in push.Samples) counts[sample]++;
        }
        _contributors[Version] = members;
        _pushes.Clear();
        Version++;
    }

    private sealed class Push(long step, int epoch, int[] samples)
    {
        public long Step { get; } = step;
        public int Epoch { get; } = epoch;
        public int[] Samples { get; } = samples;
        public bool Complete { get; set; }
    }
}

public enum WorkerPhase { Lease, PushBegin, PushComplete, Pull }

/// <summary>
/// A worker as a state machine, one move at a time: ask for a lease (handing in the previous
/// step's applied ranks), open its push, complete it, wait for the step to be applied. A
/// joiner starts by pulling the version it joins at.
/// </summary>
public sealed class SimulatedWorker(int rank, long firstStep, int epoch)
{
    private List<AppliedStep> _reports = [];
    private LeaseGrant? _grant;

    public int Rank { get; } = rank;
    public long Step { get; private set; } = firstStep;
    public int Epoch { get; private set; } = epoch;
    public WorkerPhase Phase { get; private set; } = firstStep > 0 ? WorkerPhase.Pull : WorkerPhase.Lease;
    public bool Crashed { get; private set; }
    /// <summary>Found out it was removed from the job (a false suspicion): it stops.</summary>
    public bool Evicted { get; private set; }
    public bool Finished { get; private set; }
    public string LastAction { get; private set; } = "";

    public void Crash() => Crashed = true;

    public bool CanMove(SimulatedServer server, ShardLeaseTable table) =>
        !Crashed && !Evicted && !Finished && (Phase != WorkerPhase.Pull || server.Version > PullTarget);

    /// <summary>A joiner first pulls the version it joins at (the step before it); others pull step + 1.</summary>
    private long PullTarget => _grant is null ? Step - 1 : Step;

    /// <summary>One move; returns the report it handed to the table, if any.</summary>
    public IReadOnlyList<AppliedStep>? Move(SimulatedServer server, ShardLeaseTable table, bool duplicate)
    {
        switch (Phase)
        {
            case WorkerPhase.Lease:
                return RequestLease(table, duplicate);
            case WorkerPhase.PushBegin:
                if (!server.BeginPush(Rank, Step, _grant!.Epoch, _grant.SampleIndices)) return Evict("push refused");
                Phase = WorkerPhase.PushComplete;
                LastAction = $"rank {Rank} opens push of step {Step}";
                return null;
            case WorkerPhase.PushComplete:
                if (!server.CompletePush(Rank, Step)) return Evict("push refused");
                if (duplicate) server.BeginPush(Rank, Step, _grant!.Epoch, _grant.SampleIndices); // a retried push after success
                Phase = WorkerPhase.Pull;
                LastAction = $"rank {Rank} completes push of step {Step}";
                return null;
            default:
                long applied = PullTarget;
                _reports = [];
                for (long step = Math.Max(0, applied - ShardLeaseTable.AppliedStepsKept + 1); step <= applied; step++)
                    if (server.Contributors(step) is { } ranks) _reports.Add(new AppliedStep(step, ranks));
                if (_grant is not null) Step++;
                _grant ??= LeaseGrant.Idle(Epoch, Step);
                Phase = WorkerPhase.Lease;
                LastAction = $"rank {Rank} pulls version {applied + 1}";
                return null;
        }
    }

    private IReadOnlyList<AppliedStep>? RequestLease(ShardLeaseTable table, bool duplicate)
    {
        LeaseGrant grant;
        try
        {
            grant = table.Lease(Rank, Epoch, Step, _reports);
            if (duplicate && !ReferenceEquals(grant, table.Lease(Rank, Epoch, Step, _reports)))
                throw new InvalidOperationException($"rank {Rank} step {Step}: the same request got another answer");
        }
        catch (InvalidOperationException e) when (e.Message.StartsWith("rank:", StringComparison.Ordinal))
        {
            return Evict(e.Message);
        }
        var sent = _reports;
        LastAction = $"rank {Rank} step {Step} epoch {Epoch}: {grant.Kind} {grant.ShardId}";
        _grant = grant;
        switch (grant.Kind)
        {
            case LeaseKind.Shard or LeaseKind.Idle:
                Epoch = grant.Epoch;
                Phase = WorkerPhase.PushBegin;
                break;
            case LeaseKind.EpochDone:
                Epoch = grant.Epoch + 1;
                break;
            default:
                Finished = true;
                break;
        }
        return sent;
    }

    private IReadOnlyList<AppliedStep>? Evict(string why)
    {
        Evicted = true;
        LastAction = $"rank {Rank} stops: {why}";
        return null;
    }
}
