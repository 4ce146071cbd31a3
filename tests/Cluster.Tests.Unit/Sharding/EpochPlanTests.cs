using Cluster.Shared.Sharding;

namespace Cluster.Tests.Unit.Sharding;

/// <summary>
/// <see cref="EpochPlan"/>: the per-epoch permutation cut into global batches of
/// worldSize * batchSize, rank r taking the r-th slice of every global batch.
/// </summary>
[Trait("Tier", "unit")]
public sealed class EpochPlanTests
{
    // (sampleCount, worldSize, batchSize): exact fits, short last batches, more ranks than samples.
    public static TheoryData<int, int, int> Shapes() => new()
    {
        { 100, 3, 7 },
        { 64, 2, 32 },
        { 65, 2, 32 },
        { 50, 4, 4 },
        { 1, 4, 5 },
        { 1000, 1, 64 },
        { 997, 5, 16 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Every_sample_appears_exactly_once_per_epoch_across_all_ranks(int sampleCount, int worldSize, int batchSize)
    {
        var plan = new EpochPlan(sampleCount, seed: 42, epoch: 3, worldSize, batchSize);

        var seen = new int[sampleCount];
        for (int step = 0; step < plan.StepCount; step++)
            for (int rank = 0; rank < worldSize; rank++)
                foreach (int sample in plan.Batch(rank, step))
                    seen[sample]++;

        Assert.All(seen, count => Assert.Equal(1, count));
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Rank_batches_at_each_step_concatenated_in_rank_order_are_the_global_batch(int sampleCount, int worldSize, int batchSize)
    {
        var plan = new EpochPlan(sampleCount, seed: 7, epoch: 0, worldSize, batchSize);

        for (int step = 0; step < plan.StepCount; step++)
        {
            var concatenated = new List<int>();
            for (int rank = 0; rank < worldSize; rank++) concatenated.AddRange(plan.Batch(rank, step));

            int[] global = plan.GlobalBatch(step).ToArray();
            Assert.Equal(global, concatenated);
            Assert.Equal(global.Order(), concatenated.Order());
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Step_count_is_the_ceiling_of_samples_over_the_global_batch(int sampleCount, int worldSize, int batchSize)
    {
        var plan = new EpochPlan(sampleCount, seed: 1, epoch: 0, worldSize, batchSize);

        int expected = (int)Math.Ceiling((double)sampleCount / (worldSize * batchSize));
        Assert.Equal(expected, plan.StepCount);
        Assert.Equal(worldSize * batchSize, plan.GlobalBatchSize);
    }

    [Fact]
    public void Step_count_for_full_fashion_mnist_with_two_workers_of_64_is_469()
    {
        // 60000 / 128 = 468.75, so 468 full global batches and one of 96 samples.
        var plan = new EpochPlan(60_000, seed: 1, epoch: 0, worldSize: 2, batchSize: 64);

        Assert.Equal(469, plan.StepCount);
        Assert.Equal(96, plan.GlobalBatch(468).Length);
    }

    [Fact]
    public void Same_seed_and_epoch_give_the_same_permutation()
    {
        var first = new EpochPlan(1000, seed: 99, epoch: 4, worldSize: 3, batchSize: 10);
        var second = new EpochPlan(1000, seed: 99, epoch: 4, worldSize: 2, batchSize: 50);

        // The order depends only on (sampleCount, seed, epoch), not on how it is cut.
        Assert.Equal(first.Order.ToArray(), second.Order.ToArray());
        Assert.Equal(EpochPlan.Permutation(1000, 99, 4), first.Order.ToArray());
    }

    [Fact]
    public void Order_is_a_permutation_of_all_sample_indices()
    {
        int[] order = EpochPlan.Permutation(500, seed: 3, epoch: 2);

        Assert.Equal(Enumerable.Range(0, 500), order.Order());
        Assert.NotEqual(Enumerable.Range(0, 500), order);
    }

    [Fact]
    public void Different_epoch_or_seed_gives_a_different_permutation()
    {
        int[] baseline = EpochPlan.Permutation(1000, seed: 5, epoch: 0);

        Assert.NotEqual(baseline, EpochPlan.Permutation(1000, seed: 5, epoch: 1));
        Assert.NotEqual(baseline, EpochPlan.Permutation(1000, seed: 6, epoch: 0));
        Assert.NotEqual(EpochPlan.Permutation(1000, seed: 5, epoch: 1), EpochPlan.Permutation(1000, seed: 6, epoch: 0));
    }

    [Fact]
    public void Permutation_is_pinned_so_runs_are_reproducible_across_versions()
    {
        // Golden value: a change to the shuffle silently changes every experiment's data order.
        // Computed independently from the documented SplitMix64 + Fisher-Yates.
        Assert.Equal([7, 6, 4, 1, 0, 2, 5, 8, 3, 9], EpochPlan.Permutation(10, seed: 1, epoch: 0));
    }

    [Fact]
    public void Short_last_global_batch_leaves_later_ranks_with_empty_batches()
    {
        // 50 samples, global batch 4 x 4 = 16: steps of 16, 16, 16 and a last one of 2.
        var plan = new EpochPlan(50, seed: 11, epoch: 0, worldSize: 4, batchSize: 4);

        Assert.Equal(4, plan.StepCount);
        for (int step = 0; step < 3; step++)
            Assert.Equal([4, 4, 4, 4], Enumerable.Range(0, 4).Select(rank => plan.Batch(rank, step).Length));
        Assert.Equal([2, 0, 0, 0], Enumerable.Range(0, 4).Select(rank => plan.Batch(rank, 3).Length));
        Assert.Equal(plan.Order[48..].ToArray(), plan.Batch(0, 3).ToArray());
    }

    [Fact]
    public void Short_last_global_batch_splits_partially_into_the_middle_rank()
    {
        // 100 samples, global batch 3 x 7 = 21: the last step has 16 = 7 + 7 + 2.
        var plan = new EpochPlan(100, seed: 11, epoch: 0, worldSize: 3, batchSize: 7);

        Assert.Equal(5, plan.StepCount);
        Assert.Equal([7, 7, 2], Enumerable.Range(0, 3).Select(rank => plan.Batch(rank, 4).Length));
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Shard_offsets_delimit_exactly_the_rank_batch_of_each_step(int sampleCount, int worldSize, int batchSize)
    {
        var plan = new EpochPlan(sampleCount, seed: 21, epoch: 1, worldSize, batchSize);

        int total = 0;
        for (int rank = 0; rank < worldSize; rank++)
        {
            var (indices, offsets) = plan.Shard(rank);

            Assert.Equal(plan.StepCount + 1, offsets.Length);
            Assert.Equal(0, offsets[0]);
            Assert.Equal(indices.Length, offsets[^1]);
            for (int step = 0; step < plan.StepCount; step++)
                Assert.Equal(plan.Batch(rank, step).ToArray(), indices[offsets[step]..offsets[step + 1]]);
            total += indices.Length;
        }
        Assert.Equal(sampleCount, total);
    }

    [Theory]
    [InlineData(0, 1, 1, "sampleCount")]
    [InlineData(10, 0, 1, "worldSize")]
    [InlineData(10, 1, -3, "batchSize")]
    public void Non_positive_sizes_are_rejected_naming_the_argument(int sampleCount, int worldSize, int batchSize, string parameter)
    {
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => new EpochPlan(sampleCount, 1, 0, worldSize, batchSize));

        Assert.Equal(parameter, error.ParamName);
        Assert.Contains("expected > 0", error.Message, StringComparison.Ordinal);
    }
}
