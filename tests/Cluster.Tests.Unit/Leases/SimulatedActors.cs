using Cluster.Coordinator.Leases;

namespace Cluster.Tests.Unit.Leases;

/// <summary>
/// The parameter server's elastic BSP barrier as the simulation sees it: rank r is a member of
/// step t when it joined at or before t and was not removed before t; step t is applied once
/// every member has completed its push of t. A member removed while its push of the current
/// step is complete stays in that step; one removed with a partial push loses it. The server
/// records which ranks made up each step and counts every applied sample (the ground truth).
/// It checkpoints every <see cref="CheckpointEvery"/> steps, and a <see cref="Restart"/> (kill -9,
/// start again) brings it back to its newest checkpoint: what was applied since is lost, the
/// applied-step records of the checkpoint are kept (as the real server's checkpoint keeps them).
/// </summary>
public sealed class SimulatedServer
{
    private (long Version, Dictionary<int, int[]> Applied, Dictionary<long, int[]> Contributors, HashSet<(int, long)> Pushes) _checkpoint = (0, [], [], []);

    /// <summary>Steps between checkpoints (0: none: a restart goes back to version 0).</summary>
    public int CheckpointEvery { get; set; }
    /// <summary>How often the server was restarted; workers notice a restart through their broken calls.</summary>
    public int Restarts { get; private set; }

    public void Restart()
    {
        Version = _checkpoint.Version;
        Applied.Clear();
        foreach (var (epoch, counts) in _checkpoint.Applied) Applied[epoch] = (int[])counts.Clone();
        _contributors.Clear();
        foreach (var (step, ranks) in _checkpoint.Contributors) _contributors[step] = ranks;
        _applied.Clear();
        _applied.UnionWith(_checkpoint.Pushes);
        _pushes.Clear();
        // Removed ranks stay removed (the checkpoint holds earlier removals; the coordinator tells the
        // restarted server again of later ones): none is a member of a step it has not pushed again.
        foreach (var (rank, until) in _leaveStep.ToList())
            if (until > Version) _leaveStep[rank] = Version;
        Restarts++;
    }

    private void Checkpoint() => _checkpoint = (Version, Applied.ToDictionary(a => a.Key, a => (int[])a.Value.Clone()),
        _contributors.Where(c => c.Key >= Version - ShardLeaseTable.AppliedStepsKept).ToDictionary(), [.. _applied]);

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
        if (CheckpointEvery > 0 && Version % CheckpointEvery == 0) Checkpoint();
    }

    private sealed class Push(long step, int epoch, int[] samples)
    {
        public long Step { get; } = step;
        public int Epoch { get; } = epoch;
        public int[] Samples { get; } = samples;
        public bool Complete { get; set; }
    }
}

public enum WorkerPhase { Lease, PushBegin, PushComplete, Pull, Recover }

/// <summary>
/// A worker as a state machine, one move at a time: ask for a lease (handing in the previous
/// step's applied ranks), open its push, complete it, wait for the step to be applied. A
/// joiner starts by pulling the version it joins at.
/// </summary>
public sealed class SimulatedWorker(int rank, long firstStep, int epoch, int serverRestarts = 0)
{
    private List<AppliedStep> _reports = [];
    private LeaseGrant? _grant;
    private int _restartsSeen = serverRestarts;
    private bool _rewound;
    private long _generation;

    public int Rank { get; } = rank;
    public long Step { get; private set; } = firstStep;
    public int Epoch { get; private set; } = epoch;
    public WorkerPhase Phase { get; private set; } = firstStep > 0 ? WorkerPhase.Pull : WorkerPhase.Lease;
    public bool Crashed { get; private set; }
    /// <summary>Found out it was removed from the job (a false suspicion): it stops.</summary>
    public bool Evicted { get; private set; }
    public bool Finished { get; private set; }
    /// <summary>Epochs this rank was told to evaluate a part of (an EpochDone lease with a part), as the real worker then does.</summary>
    public HashSet<int> Evaluated { get; } = [];
    public string LastAction { get; private set; } = "";

    public void Crash() => Crashed = true;

    /// <summary>The lease generation of the request that carried the last report this worker handed in.</summary>
    public long SentGeneration { get; private set; }

    /// <summary>The job failed (a rewind the lease table refused): the worker stops.</summary>
    public bool Failed { get; private set; }

    public bool CanMove(SimulatedServer server, ShardLeaseTable table) =>
        !Crashed && !Evicted && !Finished && !Failed && (Phase != WorkerPhase.Pull || server.Version > PullTarget || server.Restarts != _restartsSeen);

    /// <summary>A joiner first pulls the version it joins at (the step before it); others pull step + 1.</summary>
    private long PullTarget => _grant is null ? Step - 1 : Step;

    /// <summary>One move; returns the report it handed to the table, if any.</summary>
    public IReadOnlyList<AppliedStep>? Move(SimulatedServer server, ShardLeaseTable table, bool duplicate)
    {
        // A call in flight to a server that restarted breaks (a lease call does not touch the server).
        if (server.Restarts != _restartsSeen && Phase is WorkerPhase.PushBegin or WorkerPhase.PushComplete or WorkerPhase.Pull) Phase = WorkerPhase.Recover;
        switch (Phase)
        {
            case WorkerPhase.Lease:
                return RequestLease(table, duplicate);
            case WorkerPhase.Recover:
                // Pull the restarted server's version, with its applied-step records, and lease that step again saying so.
                _restartsSeen = server.Restarts;
                Step = server.Version;
                _reports = Reports(server, Step - 1);
                _grant ??= LeaseGrant.Idle(Epoch, Step);
                _rewound = true;
                Phase = WorkerPhase.Lease;
                LastAction = $"rank {Rank} resynchronises at version {Step}";
                return null;
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
                _reports = Reports(server, applied);
                if (_grant is not null) Step++;
                _grant ??= LeaseGrant.Idle(Epoch, Step);
                Phase = WorkerPhase.Lease;
                LastAction = $"rank {Rank} pulls version {applied + 1}";
                return null;
        }
    }

    /// <summary>What a pull of version <paramref name="throughStep"/> + 1 reports: the ranks behind the last applied steps.</summary>
    private static List<AppliedStep> Reports(SimulatedServer server, long throughStep)
    {
        var reports = new List<AppliedStep>();
        for (long step = Math.Max(0, throughStep - ShardLeaseTable.AppliedStepsKept + 1); step <= throughStep; step++)
            if (server.Contributors(step) is { } ranks) reports.Add(new AppliedStep(step, ranks));
        return reports;
    }

    private IReadOnlyList<AppliedStep>? RequestLease(ShardLeaseTable table, bool duplicate)
    {
        LeaseGrant grant;
        int epoch = _rewound ? -1 : Epoch;
        try
        {
            grant = table.Lease(Rank, epoch, Step, _reports, _rewound, _generation);
            if (duplicate && grant != table.Lease(Rank, epoch, Step, _reports, _rewound, _generation))
                throw new InvalidOperationException($"rank {Rank} step {Step}: the same request got another answer");
        }
        catch (InvalidOperationException e) when (e.Message.StartsWith("rank:", StringComparison.Ordinal))
        {
            return Evict(e.Message);
        }
        catch (InvalidOperationException e) when (e.Message.StartsWith("step: the parameter servers came back", StringComparison.Ordinal))
        {
            // The servers came back too far behind for leases: the job fails (the real worker reports it).
            Failed = true;
            LastAction = $"rank {Rank}: {e.Message}";
            return null;
        }
        var sent = _reports;
        SentGeneration = _generation;
        LastAction = $"rank {Rank} step {Step} epoch {epoch}{(_rewound ? " rewound" : "")} generation {_generation}: {grant.Kind} {grant.ShardId} (generation {grant.Generation})";
        (_rewound, _generation) = (false, grant.Generation);
        _grant = grant;
        switch (grant.Kind)
        {
            case LeaseKind.Rewind:
                Phase = WorkerPhase.Recover;
                break;
            case LeaseKind.Shard or LeaseKind.Idle:
                Epoch = grant.Epoch;
                Phase = WorkerPhase.PushBegin;
                break;
            case LeaseKind.EpochDone:
                if (grant.EvaluationPart >= 0) Evaluated.Add(grant.Epoch);
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
