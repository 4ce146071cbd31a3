namespace Cluster.Shared.Sharding;

/// <summary>One parameter server's share of the model: elements [Start, Start + Length) of the flat vector.</summary>
public readonly record struct KeyRange(long Start, int Length)
{
    public long End => Start + Length;
}

/// <summary>
/// Cuts a model's flat parameter vector into K contiguous key ranges, one per parameter
/// server, balanced by bytes and aligned to whole partitions (only the last range may end in a
/// short partition). Every rank computes the same ranges from the same inputs.
/// </summary>
public static class KeyRanges
{
    /// <summary>1 MiB of float32: the default partition (the unit of pipelined aggregation) and the largest chunk.</summary>
    public const int DefaultPartitionElements = 1 << 18;

    /// <summary>The default partition size, made smaller where needed so that every server gets at least one partition.</summary>
    public static int PartitionElementsFor(long elementCount, int serverCount) =>
        (int)Math.Clamp(elementCount / serverCount, 1, DefaultPartitionElements);

    public static IReadOnlyList<KeyRange> Split(long elementCount, int serverCount, int partitionElements)
    {
        if (elementCount <= 0) throw new ArgumentOutOfRangeException(nameof(elementCount), elementCount, "expected > 0");
        if (serverCount <= 0) throw new ArgumentOutOfRangeException(nameof(serverCount), serverCount, "expected > 0");
        if (partitionElements <= 0) throw new ArgumentOutOfRangeException(nameof(partitionElements), partitionElements, "expected > 0");
        long partitions = (elementCount + partitionElements - 1) / partitionElements;
        if (serverCount > partitions)
            throw new ArgumentException(
                $"parameter-servers: {serverCount} servers for a model of {partitions} partition(s) of {partitionElements} elements; expected at most {partitions}");
        var ranges = new List<KeyRange>(serverCount);
        long start = 0;
        for (int k = 0; k < serverCount; k++)
        {
            long partitionsBefore = partitions * k / serverCount, partitionsUpTo = partitions * (k + 1) / serverCount;
            long end = Math.Min(elementCount, partitionsUpTo * partitionElements);
            if (start != partitionsBefore * partitionElements) throw new InvalidOperationException("key ranges must be contiguous");
            ranges.Add(new KeyRange(start, checked((int)(end - start))));
            start = end;
        }
        return ranges;
    }
}
