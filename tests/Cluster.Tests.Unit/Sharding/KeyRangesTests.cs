using Cluster.Shared.Sharding;

namespace Cluster.Tests.Unit.Sharding;

/// <summary>
/// <see cref="KeyRanges"/>: the flat vector cut into one contiguous range per parameter server,
/// aligned to whole partitions and balanced to within one partition.
/// </summary>
[Trait("Tier", "unit")]
public sealed class KeyRangesTests
{
    // (elementCount, serverCount, partitionElements): exact fits, a short last partition,
    // partitions that do not divide evenly among servers, one partition per server, one server.
    public static TheoryData<long, int, int> Shapes() => new()
    {
        { 1000, 1, 100 },
        { 1000, 3, 100 },
        { 1001, 3, 100 },
        { 999, 4, 100 },
        { 10, 10, 1 },
        { 11, 3, 4 },
        { 7, 1, 7 },
        { 3_000_000, 4, KeyRanges.DefaultPartitionElements },
        { 11_173_962, 3, KeyRanges.DefaultPartitionElements },
        { 11_173_962, 7, KeyRanges.DefaultPartitionElements },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Ranges_are_contiguous_and_cover_every_element_once(long elementCount, int serverCount, int partitionElements)
    {
        var ranges = KeyRanges.Split(elementCount, serverCount, partitionElements);

        Assert.Equal(serverCount, ranges.Count);
        Assert.Equal(0, ranges[0].Start);
        for (int k = 1; k < ranges.Count; k++) Assert.Equal(ranges[k - 1].End, ranges[k].Start);
        Assert.Equal(elementCount, ranges[^1].End);
        Assert.All(ranges, range => Assert.True(range.Length > 0, $"empty range at {range.Start}"));
        Assert.Equal(elementCount, ranges.Sum(range => (long)range.Length));
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Ranges_are_aligned_to_whole_partitions_and_only_the_last_may_end_short(long elementCount, int serverCount, int partitionElements)
    {
        var ranges = KeyRanges.Split(elementCount, serverCount, partitionElements);

        Assert.All(ranges, range => Assert.Equal(0, range.Start % partitionElements));
        Assert.All(ranges.Take(ranges.Count - 1), range => Assert.Equal(0, range.Length % partitionElements));
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Ranges_are_balanced_to_within_one_partition(long elementCount, int serverCount, int partitionElements)
    {
        var ranges = KeyRanges.Split(elementCount, serverCount, partitionElements);

        long[] partitions = [.. ranges.Select(range => (range.Length + (long)partitionElements - 1) / partitionElements)];
        Assert.True(partitions.Max() - partitions.Min() <= 1, $"partitions per server: {string.Join(", ", partitions)}");
        Assert.True(ranges.Max(r => r.Length) - ranges.Min(r => r.Length) <= partitionElements,
            $"elements per server: {string.Join(", ", ranges.Select(r => r.Length))}");
    }

    [Fact]
    public void Every_caller_computes_the_same_ranges()
    {
        var first = KeyRanges.Split(11_173_962, 5, KeyRanges.DefaultPartitionElements);
        var second = KeyRanges.Split(11_173_962, 5, KeyRanges.DefaultPartitionElements);

        Assert.Equal(first, second);
    }

    [Fact]
    public void A_small_example_splits_as_expected()
    {
        // 11 elements in partitions of 2: 6 partitions (the last of 1 element), 2 per server.
        Assert.Equal([new KeyRange(0, 4), new KeyRange(4, 4), new KeyRange(8, 3)], KeyRanges.Split(11, 3, 2));
    }

    [Theory]
    [InlineData(10, 4, 4)]   // 3 partitions
    [InlineData(1, 2, 1)]
    [InlineData(100, 2, 100)]
    [InlineData(100, 101, 1)]
    public void More_servers_than_partitions_are_refused_naming_parameter_servers(long elementCount, int serverCount, int partitionElements)
    {
        var error = Assert.Throws<ArgumentException>(() => KeyRanges.Split(elementCount, serverCount, partitionElements));

        long partitions = (elementCount + partitionElements - 1) / partitionElements;
        Assert.StartsWith($"parameter-servers: {serverCount} servers for a model of {partitions} partition(s)", error.Message, StringComparison.Ordinal);
        Assert.Contains($"expected at most {partitions}", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, 1, 1)]
    [InlineData(-5, 1, 1)]
    [InlineData(10, 0, 1)]
    [InlineData(10, -1, 1)]
    [InlineData(10, 1, 0)]
    [InlineData(10, 1, -4)]
    public void Non_positive_sizes_are_refused(long elementCount, int serverCount, int partitionElements)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => KeyRanges.Split(elementCount, serverCount, partitionElements));
    }

    [Theory]
    [InlineData(100_000_000, 1)]
    [InlineData(100_000_000, 8)]
    [InlineData(4L << 18, 4)]
    public void Large_models_use_the_default_partition(long elementCount, int serverCount)
    {
        Assert.Equal(KeyRanges.DefaultPartitionElements, KeyRanges.PartitionElementsFor(elementCount, serverCount));
    }

    [Theory]
    [InlineData(1000, 3)]
    [InlineData(100_000, 4)]
    [InlineData(3L << 18, 4)]
    [InlineData(24, 6)]
    public void Small_models_get_smaller_partitions_so_that_every_server_gets_one(long elementCount, int serverCount)
    {
        int partitionElements = KeyRanges.PartitionElementsFor(elementCount, serverCount);

        Assert.InRange(partitionElements, 1, KeyRanges.DefaultPartitionElements - 1);
        var ranges = KeyRanges.Split(elementCount, serverCount, partitionElements);
        Assert.Equal(serverCount, ranges.Count);
        Assert.All(ranges, range => Assert.True(range.Length > 0));
    }

    [Theory]
    [InlineData(5, 4)]
    [InlineData(6, 4)]
    [InlineData(100, 11)]
    public void The_default_partition_size_gives_every_server_a_range_even_for_tiny_models(long elementCount, int serverCount)
    {
        // Regression: rounding the partition size up left some servers without a partition.
        var ranges = KeyRanges.Split(elementCount, serverCount, KeyRanges.PartitionElementsFor(elementCount, serverCount));

        Assert.Equal(serverCount, ranges.Count);
        Assert.Equal(elementCount, ranges.Sum(r => (long)r.Length));
    }
}
