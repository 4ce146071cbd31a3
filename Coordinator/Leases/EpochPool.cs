using System.Text.Json.Serialization;
using Cluster.Shared.Sharding;

namespace Cluster.Coordinator.Leases;

/// <summary>
/// What one epoch's audit shows: how many of its samples the parameter servers applied once,
/// not at all, or more than once (a safety violation), and how its shards moved.
/// </summary>
public sealed class EpochAudit(int epoch, int samples, int shards)
{
    public int Epoch { get; } = epoch;
    /// <summary>Samples in the epoch (the training set).</summary>
    public int Samples { get; } = samples;
    [JsonInclude]
    public int SamplesTrainedOnce { get; internal set; }
    [JsonInclude]
    public int SamplesNotTrained { get; internal set; } = samples;
    /// <summary>Samples applied more than once in the epoch: always 0 unless a safety property is broken.</summary>
    [JsonInclude]
    public int SamplesTrainedMoreThanOnce { get; internal set; }
    public int Shards { get; } = shards;
    [JsonInclude]
    public int ShardsAcknowledged { get; internal set; }
    /// <summary>Leases that went back to the pool because their step was applied without their rank.</summary>
    [JsonInclude]
    public int ShardsReturned { get; internal set; }
    /// <summary>Acknowledged shards by the rank that trained them.</summary>
    [JsonInclude]
    public SortedDictionary<int, int> ShardsByRank { get; internal set; } = [];
    /// <summary>True when every shard is acknowledged.</summary>
    [JsonInclude]
    public bool Complete { get; internal set; }

    /// <summary>A copy that later leases do not change (the API serialises it outside the board's lock).</summary>
    public EpochAudit Snapshot() => new(Epoch, Samples, Shards)
    {
        SamplesTrainedOnce = SamplesTrainedOnce, SamplesNotTrained = SamplesNotTrained, SamplesTrainedMoreThanOnce = SamplesTrainedMoreThanOnce,
        ShardsAcknowledged = ShardsAcknowledged, ShardsReturned = ShardsReturned, ShardsByRank = new(ShardsByRank), Complete = Complete,
    };
}

/// <summary>One epoch's shards: those in the pool, those leased, and how often each sample was trained.</summary>
internal sealed class EpochPool
{
    private readonly EpochPlan _plan;
    private readonly SortedSet<int> _pool = [];
    private readonly SortedSet<int>[] _bySlot;
    private byte[]? _timesTrained;
    private int _leased;
    private List<int>? _evaluators;

    public EpochPool(EpochPlan plan, int epoch)
    {
        _plan = plan;
        _bySlot = new SortedSet<int>[plan.WorldSize];
        for (int slot = 0; slot < plan.WorldSize; slot++) _bySlot[slot] = [];
        int shards = plan.StepCount * plan.WorldSize;
        for (int id = 0; id < shards; id++)
        {
            _pool.Add(id);
            _bySlot[id % plan.WorldSize].Add(id);
        }
        _timesTrained = new byte[plan.Order.Length];
        Audit = new EpochAudit(epoch, plan.Order.Length, shards);
    }

    public EpochAudit Audit { get; }
    /// <summary>Every shard acknowledged.</summary>
    public bool Trained => _pool.Count == 0 && _leased == 0;
    public IReadOnlyList<int> Evaluators => _evaluators ?? [];

    /// <summary>Takes slot's lowest shard, or else the lowest in the pool; null when the pool is empty.</summary>
    public int? Take(int? slot)
    {
        var source = slot is { } s && _bySlot[s].Count > 0 ? _bySlot[s] : _pool;
        if (source.Count == 0) return null;
        int id = source.Min;
        _pool.Remove(id);
        _bySlot[id % _plan.WorldSize].Remove(id);
        _leased++;
        return id;
    }

    public int[] Samples(int shardId) => _plan.Batch(shardId % _plan.WorldSize, shardId / _plan.WorldSize).ToArray();

    public void Acknowledge(int shardId, int rank)
    {
        _leased--;
        Audit.ShardsAcknowledged++;
        Audit.ShardsByRank[rank] = Audit.ShardsByRank.GetValueOrDefault(rank) + 1;
        if (_timesTrained is null) throw new InvalidOperationException($"epoch {Audit.Epoch}: released while shard {shardId} was leased");
        foreach (int sample in _plan.Batch(shardId % _plan.WorldSize, shardId / _plan.WorldSize))
        {
            byte times = _timesTrained[sample];
            if (times == 0) { Audit.SamplesNotTrained--; Audit.SamplesTrainedOnce++; }
            else if (times == 1) { Audit.SamplesTrainedOnce--; Audit.SamplesTrainedMoreThanOnce++; }
            if (times < byte.MaxValue) _timesTrained[sample] = (byte)(times + 1);
        }
        Audit.Complete = Trained;
    }

    public void Return(int shardId)
    {
        _leased--;
        Restock(shardId);
        Audit.ShardsReturned++;
    }

    /// <summary>Whether acknowledged shards can still be taken back (the per-sample counts are kept).</summary>
    public bool CanUnacknowledge => _timesTrained is not null;

    /// <summary>
    /// Takes back an acknowledged shard whose step the parameter servers lost (they came back from
    /// an older checkpoint): its samples count as not trained by it, and it goes back to the pool.
    /// </summary>
    public void Unacknowledge(int shardId, int rank)
    {
        var counts = _timesTrained ?? throw new InvalidOperationException($"epoch {Audit.Epoch}: its per-sample counts were released; shard {shardId} cannot be taken back");
        Audit.ShardsAcknowledged--;
        if (--Audit.ShardsByRank[rank] == 0) Audit.ShardsByRank.Remove(rank);
        foreach (int sample in _plan.Batch(shardId % _plan.WorldSize, shardId / _plan.WorldSize))
        {
            byte times = counts[sample];
            if (times == 1) { Audit.SamplesTrainedOnce--; Audit.SamplesNotTrained++; }
            else if (times == 2) { Audit.SamplesTrainedMoreThanOnce--; Audit.SamplesTrainedOnce++; }
            if (times is > 0 and < byte.MaxValue) counts[sample] = (byte)(times - 1);
        }
        Restock(shardId);
        Audit.Complete = Trained;
    }

    /// <summary>A leased shard whose step was lost goes back to the pool (not counted as returned: no step was applied without it).</summary>
    public void Unlease(int shardId)
    {
        _leased--;
        Restock(shardId);
    }

    private void Restock(int shardId)
    {
        _pool.Add(shardId);
        _bySlot[shardId % _plan.WorldSize].Add(shardId);
    }

    /// <summary>Sets the ranks that evaluate this epoch, in part order, once: when it is first found trained.</summary>
    public void FixEvaluators(IEnumerable<int> ranks) => _evaluators ??= [.. ranks];

    /// <summary>Rank's part of the test set (see <see cref="FixEvaluators"/>); -1 when it has none.</summary>
    public int EvaluationPart(int rank) => _evaluators?.IndexOf(rank) ?? -1;

    public void WriteAudit() => Audit.Complete = Trained;

    /// <summary>Drops the per-sample counts of an epoch two behind; its audit stays.</summary>
    public void Release() => _timesTrained = _leased == 0 ? null : _timesTrained;
}
