namespace Cluster.Shared.Sharding;

/// <summary>
/// One epoch's order of the training set: a permutation seeded by (seed, epoch), cut into
/// global batches of <c>worldSize * batchSize</c> samples. Rank r trains the r-th slice of
/// every global batch, so that the union of all ranks' batches at step s is exactly the
/// single-process batch s of size <c>worldSize * batchSize</c>. The last global batch may be
/// short; a rank whose slice of it is empty trains zero samples at that step.
/// </summary>
public sealed class EpochPlan
{
    private readonly int[] _permutation;

    public EpochPlan(int sampleCount, long seed, int epoch, int worldSize, int batchSize)
    {
        if (sampleCount <= 0) throw new ArgumentOutOfRangeException(nameof(sampleCount), sampleCount, "expected > 0");
        if (worldSize <= 0) throw new ArgumentOutOfRangeException(nameof(worldSize), worldSize, "expected > 0");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "expected > 0");
        _permutation = Permutation(sampleCount, seed, epoch);
        WorldSize = worldSize;
        BatchSize = batchSize;
        StepCount = (sampleCount + GlobalBatchSize - 1) / GlobalBatchSize;
    }

    public int WorldSize { get; }
    public int BatchSize { get; }
    public int GlobalBatchSize => WorldSize * BatchSize;
    public int StepCount { get; }

    /// <summary>The whole epoch's sample order.</summary>
    public ReadOnlySpan<int> Order => _permutation;

    /// <summary>The samples of <paramref name="rank"/> at <paramref name="step"/> (possibly empty).</summary>
    public ReadOnlySpan<int> Batch(int rank, int step)
    {
        int start = Math.Min(step * GlobalBatchSize + rank * BatchSize, _permutation.Length);
        int end = Math.Min(start + BatchSize, _permutation.Length);
        return _permutation.AsSpan(start, end - start);
    }

    /// <summary>The samples of one single-process step with batch <c>GlobalBatchSize</c>.</summary>
    public ReadOnlySpan<int> GlobalBatch(int step)
    {
        int start = step * GlobalBatchSize;
        return _permutation.AsSpan(start, Math.Min(GlobalBatchSize, _permutation.Length - start));
    }

    /// <summary>Rank's shard of the epoch: all its samples in training order, and where each step starts.</summary>
    public (int[] SampleIndices, int[] StepOffsets) Shard(int rank)
    {
        var indices = new List<int>(_permutation.Length / WorldSize + BatchSize);
        var offsets = new int[StepCount + 1];
        for (int step = 0; step < StepCount; step++)
        {
            offsets[step] = indices.Count;
            indices.AddRange(Batch(rank, step));
        }
        offsets[StepCount] = indices.Count;
        return (indices.ToArray(), offsets);
    }

    /// <summary>Fisher-Yates shuffle driven by a seeded SplitMix64: the same on every machine and runtime.</summary>
    public static int[] Permutation(int sampleCount, long seed, int epoch)
    {
        var order = new int[sampleCount];
        for (int i = 0; i < sampleCount; i++) order[i] = i;
        ulong state = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)epoch + 1);
        for (int i = sampleCount - 1; i > 0; i--)
        {
            int j = (int)(NextRandom(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    private static ulong NextRandom(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
