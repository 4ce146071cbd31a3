using Cluster.Shared.Sharding;

namespace Cluster.Coordinator.Leases;

/// <summary>
/// The shard leases of one parameter-server job: every epoch is a pool of shards that live
/// ranks lease one per step, and a shard counts as trained only once a parameter server has
/// applied it. Plain, deterministic class: the coordinator and the seeded simulation in the
/// unit tests run this same code. Not thread-safe: <see cref="Jobs.JobBoard"/> guards it.
///
/// Shards. Epoch e is the <see cref="EpochPlan"/> of (seed, e) with <c>slots</c> = the job's
/// initial worker count: shard (t, s) is slot s's slice of global batch t. Shard ids order
/// shards by step, then slot.
///
/// Message sequence, per rank and global step t (the parameter server's step, which runs on
/// across epochs):
///  1. The rank asks for a lease for (epoch e, step t) and hands in what its pull of version t
///     told it: which ranks' complete pushes made up step t - 1 and the few steps before it
///     (<see cref="AppliedStep"/>; a server keeps the last <see cref="AppliedStepsKept"/>).
///  2. The table first settles those steps (see "when a shard is trained"), then answers:
///     a shard (the rank trains it and pushes step t with its samples), idle (push step t with
///     0 samples: the pool is empty but leases of this epoch are still unsettled), epoch done
///     (every shard of e is trained: evaluate, then ask again for (e + 1, t)), or job done.
///     The same request asked twice gets the same answer.
///     A rank may ask without an epoch (-1): a joiner's first request, or one after a rewind.
///     It is first told of any ended epoch whose evaluators include it and that it was not yet
///     told of (it evaluates its part), then given the current epoch. The evaluators of an
///     epoch are fixed when it is first found trained: the members whose first lease was in it
///     or before (a joiner that starts in a later epoch never hears of this one).
///  3. Hand-out order: a rank whose slot s &lt; slots still has shards takes its own lowest one;
///     otherwise the lowest shard left in the pool. Without faults rank r therefore trains
///     (t, r) at every step t of the epoch: exactly the static plan, the same batches as
///     single-process training on the union.
///
/// When a shard is trained (the audit is exact, never inferred from a worker's word alone).
/// A parameter server applies step t from the complete pushes of the ranks that are members
/// of step t; a rank removed while its push of step t is incomplete is not a member of step t
/// and its partial push is discarded, never half-applied (servers apply a step only once
/// every member's push of it is complete; see ParameterServer's JobParameters.Membership). The
/// server records which ranks made up step t and sends that list, with those of the steps just
/// before, in every pull of version t + 1 (as soon as step t's pushes are complete, before its
/// partitions are applied and sent: the rank asks for its next lease meanwhile); each rank forwards them with its next
/// lease request (the earlier steps cover reports lost with ranks that died right after a pull). The table then
/// acknowledges the step-t leases of the ranks on the list (their samples are trained, even
/// when that rank died right after its push) and returns the others' shards to the pool
/// (their pushes were never applied). Lists of steps already settled change nothing, so
/// duplicated or late reports are harmless; a request for a step already settled is stale and
/// refused. With K parameter servers a rank forwards the intersection of the K lists; a rank
/// that dies between its pushes to two servers then has its shard retrained although one
/// server applied it (a known limit: part of the model sees that batch twice).
///
/// Rewind. A parameter server killed and restarted from a checkpoint at version v has lost the
/// steps applied from v on (its checkpoint keeps the ranks behind the steps before v, which its
/// pulls report as usual). The first rank that finds it so asks for step v with "servers
/// rewound", handing in that report: the table settles the steps before v, then takes back the acknowledged shards of steps v and later (their samples
/// count as untrained again) and the leases still outstanding, puts them all back in the pool,
/// and settles from step v again; the epoch of step v becomes current again if it had ended.
/// Because hand-out is lowest-shard-first, the ranks then lease the very shards they trained
/// before, so the retrained steps use the same batches. Each rewind starts a new lease
/// generation; a rank whose request carries an older one has not met the restarted servers (its
/// report describes lost steps): its report is not used, and it is told to rewind too. An epoch two or more behind the newest has released its per-sample
/// counts and cannot be rewound into (refused with the reason).
/// </summary>
public sealed class ShardLeaseTable
{
    private readonly int _sampleCount, _slots, _batchSize, _epochs;
    private readonly long _seed;
    private readonly SortedSet<int> _members = [];
    private readonly HashSet<int> _removed = [];
    private readonly Dictionary<int, int> _firstEpoch = [];     // rank -> the epoch of its first lease (the initial ranks: 0)
    private readonly Dictionary<int, EpochPool> _pools = [];
    private readonly Dictionary<(int Rank, long Step), LeasedShard> _outstanding = [];
    private readonly Dictionary<int, (int Requested, int Epoch, long Step, LeaseGrant Grant)> _lastGrant = [];
    private readonly HashSet<(int Rank, int Epoch)> _toldDone = [];  // ranks given their part of an ended epoch
    private readonly List<EpochAudit> _audits = [];
    private readonly HashSet<long> _settled = [];
    private readonly Dictionary<long, List<(int Epoch, int ShardId, int Rank)>> _acknowledgedAt = [];
    private long _settledThrough = -1;
    private long _releasedThrough = -1;

    /// <summary>How many recent applied steps a parameter server reports with each pull.</summary>
    public const int AppliedStepsKept = 16;

    public ShardLeaseTable(int sampleCount, long seed, int slots, int batchSize, int epochs)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(sampleCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(slots, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(epochs, 1);
        (_sampleCount, _seed, _slots, _batchSize, _epochs) = (sampleCount, seed, slots, batchSize, epochs);
        for (int rank = 0; rank < slots; rank++)
        {
            _members.Add(rank);
            _firstEpoch[rank] = 0;
        }
    }

    public int SampleCount => _sampleCount;
    /// <summary>How many times steps were rewound (see "Rewind"); grants carry it, and requests of an older one are told to rewind.</summary>
    public long Generation { get; private set; }
    /// <summary>Ranks that may lease: the initial ones and those that joined, less those removed.</summary>
    public IReadOnlyCollection<int> Members => _members;
    /// <summary>The lowest epoch not yet fully trained; the epoch count when the job is trained.</summary>
    public int CurrentEpoch { get; private set; }
    /// <summary>The highest step whose applied ranks the table has been told.</summary>
    public long SettledThrough => _settledThrough;

    /// <summary>Adds a rank that joins the running job (it takes shards from the common pool).</summary>
    public void AddRank(int rank)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        if (_removed.Contains(rank)) throw new InvalidOperationException($"rank: {rank} was removed from the job; a joining worker gets a new rank");
        _members.Add(rank);
    }

    /// <summary>
    /// A rank is gone (dead, or left): it gets no more leases. Its unsettled leases stay until
    /// the step they belong to is reported, because its push may still have been applied.
    /// </summary>
    public bool RemoveRank(int rank)
    {
        if (!_members.Remove(rank)) return false;
        _removed.Add(rank);
        return true;
    }

    public bool IsRemoved(int rank) => _removed.Contains(rank);

    /// <summary>Step 2 of the sequence: settles <paramref name="applied"/>, then answers rank's request.</summary>
    public LeaseGrant Lease(int rank, int epoch, long step, IEnumerable<AppliedStep> applied, bool serversRewound = false, long generation = -1)
    {
        if (!_members.Contains(rank))
            throw new InvalidOperationException($"rank: {rank} is not a member of the job{(_removed.Contains(rank) ? " (it was removed: declared dead or left)" : "")}");
        if (step < 0) throw new ArgumentException($"step: {step}; expected 0 or more");
        if (generation > Generation) throw new ArgumentException($"lease_generation: {generation}; the job is at generation {Generation}");
        // A rank that has not met the restarted servers: its report is about lost steps.
        // It keeps its generation until it has rewound (its rewound request is then known as one of this generation's).
        if (!serversRewound && generation >= 0 && generation < Generation) return LeaseGrant.Rewind(_settledThrough + 1) with { Generation = generation };
        // Servers back at version `step` applied every step before it: the report (from the restored
        // servers' pull) settles those first; then the steps from `step` on are taken back.
        foreach (var report in applied.Where(a => !serversRewound || a.Step < step).OrderBy(a => a.Step)) Settle(report);
        // The first rank to meet restarted servers opens a new generation, even when they lost no
        // settled step yet: reports from before their restart may describe steps they lost.
        if (serversRewound && (Rewind(step) | generation == Generation)) Generation++;
        if (step <= _settledThrough)
            throw new InvalidOperationException($"step: {step} was already applied (steps through {_settledThrough} are settled); the request is stale");
        // A rank leases step t after pulling version t, and hands in the ranks of step t - 1 with the request.
        if (step > _settledThrough + 1)
            throw new ArgumentException($"step: {step} is ahead of the applied steps (through {_settledThrough}); expected {_settledThrough + 1}");
        int resolved = epoch >= 0 ? epoch : UntoldEvaluation(rank) ?? CurrentEpoch;
        // A request asked again (a lost reply) gets the answer it got, even one without an epoch whose answer told of an ended one.
        if (_lastGrant.TryGetValue(rank, out var last) && last.Step == step && (last.Epoch == resolved || epoch < 0 && last.Requested < 0))
        {
            if (last.Grant.Generation != Generation) _lastGrant[rank] = last = last with { Grant = last.Grant with { Generation = Generation } };
            return last.Grant;
        }
        _firstEpoch.TryAdd(rank, resolved);
        var grant = Answer(rank, resolved, step) with { Generation = Generation };
        _lastGrant[rank] = (epoch, resolved, step, grant);
        return grant;
    }

    /// <summary>
    /// Records which ranks' pushes made up an applied step: their leases of that step are
    /// acknowledged, the other ranks' shards of that step go back to the pool. Idempotent.
    /// </summary>
    public void Settle(AppliedStep applied)
    {
        // Steps settle in order; a report beyond the next step describes steps the servers lost (a rewind): ignored.
        if (applied.Step > _settledThrough + 1 || !_settled.Add(applied.Step)) return;
        var contributors = new HashSet<int>(applied.Ranks);
        foreach (var key in _outstanding.Keys.Where(k => k.Step == applied.Step).OrderBy(k => k.Rank).ToList())
        {
            var lease = _outstanding[key];
            _outstanding.Remove(key);
            var pool = _pools[lease.Epoch];
            if (contributors.Contains(key.Rank))
            {
                pool.Acknowledge(lease.ShardId, key.Rank);
                AcknowledgedAt(applied.Step).Add((lease.Epoch, lease.ShardId, key.Rank));
            }
            else
            {
                pool.Return(lease.ShardId);
            }
        }
        // Leases of other steps wait for their own report: a list says nothing of another step.
        _settledThrough = Math.Max(_settledThrough, applied.Step);
        AdvanceEpoch();
    }

    /// <summary>
    /// The parameter servers came back at version <paramref name="toStep"/>: steps from it on
    /// were lost. Takes back their shards (see "Rewind" above); returns false when nothing
    /// applied was lost (no step from <paramref name="toStep"/> on was settled: already rewound).
    /// </summary>
    public bool Rewind(long toStep)
    {
        if (toStep > _settledThrough) return false;
        var lost = _acknowledgedAt.Where(a => a.Key >= toStep).OrderByDescending(a => a.Key).ToList();
        if (toStep <= _releasedThrough || lost.SelectMany(a => a.Value).Any(a => !_pools[a.Epoch].CanUnacknowledge))
            throw new InvalidOperationException(
                $"step: the parameter servers came back at version {toStep}, in an epoch two or more behind the newest, whose per-sample counts were released; the job cannot retrain it with leases");
        foreach (var (step, shards) in lost)
        {
            foreach (var (epoch, shardId, rank) in shards) _pools[epoch].Unacknowledge(shardId, rank);
            _acknowledgedAt.Remove(step);
        }
        foreach (var (key, lease) in _outstanding.OrderBy(o => o.Key.Step).ThenBy(o => o.Key.Rank).ToList())
        {
            _pools[lease.Epoch].Unlease(lease.ShardId);
            _outstanding.Remove(key);
        }
        _settled.RemoveWhere(step => step >= toStep);
        _settledThrough = toStep - 1;
        foreach (int rank in _lastGrant.Where(g => g.Value.Step >= toStep).Select(g => g.Key).ToList()) _lastGrant.Remove(rank);
        CurrentEpoch = 0;
        AdvanceEpoch();
        return true;
    }

    private List<(int Epoch, int ShardId, int Rank)> AcknowledgedAt(long step)
    {
        if (!_acknowledgedAt.TryGetValue(step, out var shards)) _acknowledgedAt[step] = shards = [];
        return shards;
    }

    /// <summary>Ranks that must evaluate epoch <paramref name="epoch"/> (fixed when it was first done), in part order.</summary>
    public IReadOnlyList<int> Evaluators(int epoch) => _pools.TryGetValue(epoch, out var pool) ? pool.Evaluators : [];

    /// <summary>The audit of every epoch started so far, as copies.</summary>
    public IReadOnlyList<EpochAudit> Audits()
    {
        foreach (var pool in _pools.Values) pool.WriteAudit();
        return [.. _audits.Select(audit => audit.Snapshot())];
    }

    private LeaseGrant Answer(int rank, int epoch, long step)
    {
        if (epoch >= _epochs) return LeaseGrant.JobDone(step);
        if (epoch > CurrentEpoch)
            throw new InvalidOperationException($"epoch: {epoch} cannot start; epoch {CurrentEpoch} is not trained yet");
        var pool = Pool(epoch);
        if (pool.Trained)
        {
            FixEvaluators(epoch, pool); // done when it was found trained; here only as a guard
            int part = pool.EvaluationPart(rank);
            if (part >= 0) _toldDone.Add((rank, epoch));
            return LeaseGrant.EpochDone(epoch, step, part, pool.Evaluators.Count);
        }
        int? shard = pool.Take(rank < _slots ? rank : null);
        if (shard is not { } id) return LeaseGrant.Idle(epoch, step);
        _outstanding[(rank, step)] = new LeasedShard(epoch, id);
        return LeaseGrant.Shard(epoch, step, id, pool.Samples(id));
    }

    /// <summary>
    /// The first ended epoch that counts on rank to evaluate a part of it and of which it was not
    /// told: a rank asking without an epoch after a rewind may have missed it.
    /// </summary>
    private int? UntoldEvaluation(int rank)
    {
        for (int epoch = 0; epoch < CurrentEpoch; epoch++)
            if (_pools.TryGetValue(epoch, out var pool) && pool.Evaluators.Contains(rank) && !_toldDone.Contains((rank, epoch))) return epoch;
        return null;
    }

    private EpochPool Pool(int epoch)
    {
        if (!_pools.TryGetValue(epoch, out var pool))
        {
            pool = new EpochPool(new EpochPlan(_sampleCount, _seed, epoch, _slots, _batchSize), epoch);
            _pools[epoch] = pool;
            _audits.Add(pool.Audit);
            // Plans and per-sample counts of older epochs are no longer needed: their audits stay.
            if (_pools.TryGetValue(epoch - 2, out var old))
            {
                old.Release();
                foreach (long step in _acknowledgedAt.Where(a => a.Value.All(s => s.Epoch <= epoch - 2)).Select(a => a.Key).ToList())
                {
                    _acknowledgedAt.Remove(step);
                    _releasedThrough = Math.Max(_releasedThrough, step);
                }
            }
        }
        return pool;
    }

    private void AdvanceEpoch()
    {
        while (CurrentEpoch < _epochs && _pools.TryGetValue(CurrentEpoch, out var pool) && pool.Trained)
        {
            FixEvaluators(CurrentEpoch, pool);
            CurrentEpoch++;
        }
    }

    /// <summary>
    /// The epoch's evaluators, once: the members whose first lease was in it or before. A rank that
    /// joined later starts at a later epoch (its first lease asks for the current one): it is never
    /// told this one is done, so it is not one of its evaluators.
    /// </summary>
    private void FixEvaluators(int epoch, EpochPool pool) =>
        pool.FixEvaluators(_members.Where(rank => _firstEpoch.TryGetValue(rank, out int first) && first <= epoch));

    private readonly record struct LeasedShard(int Epoch, int ShardId);
}

/// <summary>Which ranks' complete pushes a parameter server applied as step <paramref name="Step"/>.</summary>
public sealed record AppliedStep(long Step, IReadOnlyList<int> Ranks);

public enum LeaseKind { Shard, Idle, EpochDone, JobDone, Rewind }

/// <summary>
/// The answer to a lease request. <see cref="EvaluationPart"/> of <see cref="EvaluationParts"/>:
/// the slice of the test set this rank evaluates when the epoch is done (-1: none).
/// </summary>
public sealed record LeaseGrant(LeaseKind Kind, int Epoch, long Step, int ShardId, int[] SampleIndices, int EvaluationPart, int EvaluationParts)
{
    /// <summary>The table's <see cref="ShardLeaseTable.Generation"/> when it answered.</summary>
    public long Generation { get; init; }

    public static LeaseGrant Shard(int epoch, long step, int shardId, int[] samples) => new(LeaseKind.Shard, epoch, step, shardId, samples, -1, 0);
    public static LeaseGrant Idle(int epoch, long step) => new(LeaseKind.Idle, epoch, step, -1, [], -1, 0);
    public static LeaseGrant EpochDone(int epoch, long step, int part, int parts) => new(LeaseKind.EpochDone, epoch, step, -1, [], part, parts);
    public static LeaseGrant JobDone(long step) => new(LeaseKind.JobDone, -1, step, -1, [], -1, 0);
    public static LeaseGrant Rewind(long step) => new(LeaseKind.Rewind, -1, step, -1, [], -1, 0);
}
