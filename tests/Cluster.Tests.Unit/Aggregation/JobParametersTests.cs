using Cluster.ParameterServer.Aggregation;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// <see cref="JobParameters"/>: BSP pushes for the current step only, one per rank; a step is
/// applied, partition by partition, once every rank's push is complete, partitions holding NaN
/// or Inf take no part in the mean, and the version advances once every partition is applied.
/// Updates may be applied off the caller's thread, so every check of weights or versions first
/// waits for the partition or version it expects (and a test that expects nothing to move checks
/// only after something it can wait for).
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobParametersTests
{
    private static readonly float[] InitialWeights = [1f, 2f, 3f, 4f];

    // Plain SGD with lr 1: new weights = weights - combined gradient, exact for these values.
    private static readonly OptimizerSettings PlainSgd = new() { Kind = "sgd", LearningRate = 1 };

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);

    private static JobParameters NewJob(int worldSize = 2, float[]? weights = null, int partitionElements = JobParameters.DefaultPartitionElements,
        OptimizerSettings? optimizer = null) =>
        new("job-7", worldSize, new TensorLayout(), optimizer ?? PlainSgd, [.. weights ?? InitialWeights], partitionElements: partitionElements);

    /// <summary>One whole push: begin, receive every element at once, complete.</summary>
    private static long Push(JobParameters job, int rank, long step, float[] gradient, int sampleCount)
    {
        Begin(job, rank, step, gradient, sampleCount);
        job.Received(rank, gradient.Length);
        return job.CompletePush(rank);
    }

    /// <summary>Opens a push and writes the whole gradient into the rank's buffer; nothing counts as received yet.</summary>
    private static void Begin(JobParameters job, int rank, long step, float[] gradient, int sampleCount) =>
        gradient.CopyTo(job.BeginPush(rank, step, sampleCount).Span);

    /// <summary>Waits (bounded) until every partition has reached <paramref name="version"/>.</summary>
    private static Task Reached(JobParameters job, long version) =>
        job.WaitForVersionAsync(version, CancellationToken.None).WaitAsync(Patience);

    private static Task PartitionReached(JobParameters job, int partition, long version) =>
        job.WaitForPartitionAsync(partition, version, CancellationToken.None).WaitAsync(Patience);

    private static float[] Filled(int length, float value) => Enumerable.Repeat(value, length).ToArray();

    private static float[] Sequence(int length, float start) => [.. Enumerable.Range(0, length).Select(i => start + i)];

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];

    [Fact]
    public async Task When_every_rank_pushed_the_version_increments_and_waiters_complete()
    {
        var job = NewJob();
        var waiter = job.WaitForVersionAsync(1, CancellationToken.None);

        long afterFirst = Push(job, 1, 0, [3f, 3f, 3f, 3f], sampleCount: 3);
        Assert.Equal(0, afterFirst);
        Assert.False(waiter.IsCompleted);

        long afterSecond = Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        await waiter.WaitAsync(Patience);

        Assert.InRange(afterSecond, 0, 1); // the update may still be running when the last push closes
        Assert.Equal(1, job.Version);
        // Combined gradient (1 * 1 + 3 * 3) / 4 = 2.5 everywhere.
        Assert.Equal([-1.5f, -0.5f, 0.5f, 1.5f], job.WeightsAsFloats.ToArray());
        Assert.Equal(0, job.RejectedGradients);
    }

    [Fact]
    public async Task Waiting_for_an_already_reached_version_completes_at_once_and_a_later_one_can_be_cancelled()
    {
        var job = NewJob(worldSize: 1);
        Push(job, 0, 0, [0f, 0f, 0f, 0f], sampleCount: 4);
        await Reached(job, 1);

        Assert.True(job.WaitForVersionAsync(1, CancellationToken.None).IsCompletedSuccessfully);
        Assert.True(job.WaitForPartitionAsync(0, 1, CancellationToken.None).IsCompletedSuccessfully);
        using var cancellation = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => job.WaitForVersionAsync(2, cancellation.Token));
        Assert.Equal(1, job.Version);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(-1)]
    public void A_push_for_another_step_than_the_current_one_is_rejected_naming_step(long step)
    {
        var job = NewJob();

        var error = Assert.ThrowsAny<PushRejectedException>(() => job.BeginPush(0, step, 1));

        Assert.StartsWith($"step: {step} ", error.Message, StringComparison.Ordinal);
        Assert.Contains("current step 0", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_push_for_a_step_already_applied_is_acknowledged_as_a_duplicate_and_changes_nothing()
    {
        var job = NewJob(worldSize: 1);
        Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        await Reached(job, 1);

        long version = Push(job, 0, 0, [5f, 5f, 5f, 5f], sampleCount: 1);

        Assert.Equal(1, version);
        Assert.Equal(1, job.Version);
        Assert.Equal(1, job.DuplicatePushes);
        Assert.Equal([0f, 1f, 2f, 3f], job.WeightsAsFloats.ToArray());
    }

    [Theory]
    [InlineData(2)]
    [InlineData(-1)]
    [InlineData(int.MaxValue)]
    public void A_push_from_an_out_of_range_rank_is_rejected_naming_rank(int rank)
    {
        var job = NewJob();

        var error = Assert.ThrowsAny<PushRejectedException>(() => job.BeginPush(rank, 0, 1));

        Assert.StartsWith($"rank: {rank} is out of range", error.Message, StringComparison.Ordinal);
        Assert.Contains("ranks 0 to 1", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_push_from_the_same_rank_in_one_step_is_acknowledged_without_being_applied_twice()
    {
        var job = NewJob();
        Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 2);

        Assert.Equal(0, Push(job, 0, 0, [9f, 9f, 9f, 9f], sampleCount: 2));
        Assert.Equal(0, job.Version);
        Assert.Equal(InitialWeights, job.WeightsAsFloats.ToArray());

        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 2);
        await Reached(job, 1);
        // The mean of rank 0's first push and rank 1's: 1 everywhere, once.
        Assert.Equal([0f, 1f, 2f, 3f], job.WeightsAsFloats.ToArray());
        Assert.Equal(1, job.DuplicatePushes);
    }

    [Fact]
    public void A_rank_cannot_open_a_second_push_while_one_is_open_naming_rank()
    {
        var job = NewJob();
        job.BeginPush(0, 0, 1);

        var error = Assert.ThrowsAny<PushRejectedException>(() => job.BeginPush(0, 0, 1));

        Assert.StartsWith("rank: 0 is already pushing step 0", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Completing_a_push_that_has_not_delivered_every_partition_is_rejected_naming_chunks()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        Begin(job, 0, 0, Filled(11, 1f), sampleCount: 1);
        job.Received(0, 6); // partition 0 and half of partition 1

        var error = Assert.ThrowsAny<PushRejectedException>(() => job.CompletePush(0));

        Assert.StartsWith("chunks: rank 0 delivered 1 of 3 partitions of step 0", error.Message, StringComparison.Ordinal);
        Assert.Equal(0, job.Version);
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public async Task A_gradient_with_nan_or_inf_is_refused_counted_and_left_out_of_the_mean(float bad)
    {
        var job = NewJob();
        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 1);

        var error = Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, [0f, 0f, bad, 0f], sampleCount: 3));
        await Reached(job, 1);

        Assert.StartsWith("gradient: rank 0 step 0 contains NaN or Inf", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, job.RejectedGradients);
        // The step completes from rank 1 alone: its gradient 1 with weight 1, not 1/4.
        Assert.Equal(1, job.Version);
        Assert.Equal([0f, 1f, 2f, 3f], job.WeightsAsFloats.ToArray());
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public async Task A_partition_whose_only_gradient_holds_nan_or_inf_keeps_its_weights(float bad)
    {
        var job = NewJob(worldSize: 1);

        var error = Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, [5f, bad, 5f, 5f], sampleCount: 2));
        await Reached(job, 1);

        Assert.StartsWith("gradient: ", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, job.RejectedGradients);
        Assert.Equal(InitialWeights, job.WeightsAsFloats.ToArray());
        Assert.All(job.WeightsAsFloats.ToArray(), w => Assert.True(float.IsFinite(w)));
    }

    [Fact]
    public async Task After_a_refused_gradient_the_rank_pushes_the_next_step_normally()
    {
        var job = NewJob();
        Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, [float.NaN, 0f, 0f, 0f], sampleCount: 1));
        // The refused push counts as delivered: pushing this step again is a duplicate, acknowledged and not applied.
        Assert.Equal(0, Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1));
        Assert.Equal(1, job.DuplicatePushes);
        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        await Reached(job, 1);

        Assert.Equal(1, Push(job, 1, 1, [2f, 2f, 2f, 2f], sampleCount: 1));
        Push(job, 0, 1, [2f, 2f, 2f, 2f], sampleCount: 1); // does not throw: the refusal was for step 0 only
        await Reached(job, 2);

        Assert.Equal(2, job.Version);
        Assert.Equal(1, job.RejectedGradients);
        // Step 0: rank 1's gradient 1 alone; step 1: mean 2.
        Assert.Equal([-2f, -1f, 0f, 1f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task Consecutive_steps_each_need_every_rank_and_apply_in_turn()
    {
        var job = NewJob();
        Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        Assert.ThrowsAny<PushRejectedException>(() => job.BeginPush(0, 1, 1)); // step 1 needs rank 1's step 0 first
        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        await Reached(job, 1);

        Assert.Equal(1, Push(job, 0, 0, [7f, 7f, 7f, 7f], sampleCount: 1)); // a retry of step 0: acknowledged, not applied
        Assert.Equal(1, Push(job, 1, 1, [0.5f, 0.5f, 0.5f, 0.5f], sampleCount: 2));
        Assert.Equal(1, job.Version);
        Push(job, 0, 1, [0.5f, 0.5f, 0.5f, 0.5f], sampleCount: 2);
        await Reached(job, 2);

        Assert.Equal(2, job.Version);
        Assert.Equal([-0.5f, 0.5f, 1.5f, 2.5f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public void The_vector_is_cut_into_partitions_with_a_short_last_one()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);

        Assert.Equal(3, job.PartitionCount);
        Assert.Equal([0, 4, 8], Enumerable.Range(0, 3).Select(job.PartitionStart));
        Assert.Equal([4, 4, 3], Enumerable.Range(0, 3).Select(job.PartitionLength));
        Assert.Equal([9f, 10f, 11f], job.Partition(2).ToArray());
    }

    [Fact]
    public async Task A_step_is_applied_only_once_every_rank_has_delivered_its_whole_push()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        var versionWaiter = job.WaitForVersionAsync(1, CancellationToken.None);
        Begin(job, 0, 0, Filled(11, 1f), sampleCount: 1);
        Begin(job, 1, 0, Filled(11, 3f), sampleCount: 1);

        job.Received(0, 4);
        job.Received(1, 4);
        job.Received(0, 11);
        // Partition 0 arrived from both ranks, but rank 1's push is not whole: nothing moves
        // (a rank lost now must not leave half of its gradient applied).
        await Task.Delay(50);
        Assert.False(job.WaitForPartitionAsync(0, 1, CancellationToken.None).IsCompleted);
        Assert.Equal(Sequence(11, 1f), job.WeightsAsFloats.ToArray());

        job.Received(1, 11);
        job.CompletePush(0);
        job.CompletePush(1);

        await versionWaiter.WaitAsync(Patience);
        Assert.Equal(1, job.Version);
        Assert.Equal([-1f, 0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f, 8f, 9f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task A_partition_is_applied_exactly_once_however_often_its_delivery_is_reported()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        Begin(job, 0, 0, Filled(11, 1f), sampleCount: 1);
        Begin(job, 1, 0, Filled(11, 1f), sampleCount: 1);

        int[] firstReports = [4, 4, 6, 4];
        foreach (int received in firstReports)
        {
            job.Received(0, received);
            job.Received(1, received);
        }

        int[] laterReports = [8, 11, 11, 4];
        foreach (int received in laterReports)
        {
            job.Received(0, received);
            job.Received(1, received);
        }
        job.CompletePush(0);
        job.CompletePush(1);
        // Updates are applied in the order partitions complete, so a second update of partition 0
        // would have landed before the last partition's.
        await Reached(job, 1);

        Assert.Equal(1, job.Version);
        Assert.Equal(Sequence(11, 0f), job.WeightsAsFloats.ToArray());
    }

    public static TheoryData<string> OptimizerKinds() => ["adam", "adamw", "sgd"];

    [Theory]
    [MemberData(nameof(OptimizerKinds))]
    public async Task Partition_by_partition_application_gives_the_same_bits_as_one_whole_vector_step(string kind)
    {
        const int elementCount = 37;
        int[] partitionEnds = [12, 24, 36, 37];
        // 12-element partitions: SIMD blocks and scalar tails fall on other elements than in the whole vector.
        var settings = new OptimizerSettings
        {
            Kind = kind, LearningRate = 0.01, WeightDecay = 0.1,
            Momentum = kind == "sgd" ? 0.9 : 0, Nesterov = kind == "sgd",
        };
        var random = new Random(11);
        float[] initial = RandomVector(random, elementCount);
        var job = NewJob(weights: initial, partitionElements: 12, optimizer: settings);
        var reference = (float[])initial.Clone();
        var referenceOptimizer = settings.Create(elementCount);
        var referenceAggregator = new StepAggregator(2, elementCount);
        int[] sampleCounts = [5, 11];

        for (long step = 0; step < 3; step++)
        {
            float[][] gradients = [RandomVector(random, elementCount), RandomVector(random, elementCount)];
            for (int rank = 0; rank < 2; rank++)
            {
                Begin(job, rank, step, gradients[rank], sampleCounts[rank]);
                gradients[rank].CopyTo(referenceAggregator.BufferFor(rank).Span);
                referenceAggregator.SetSampleCount(rank, sampleCounts[rank]);
            }
            // Rank 1 delivers partition by partition, so each partition is applied on its own.
            job.Received(0, elementCount);
            foreach (int received in partitionEnds) job.Received(1, received);
            job.CompletePush(0);
            job.CompletePush(1);
            await Reached(job, step + 1);

            var combined = new float[elementCount];
            referenceAggregator.Combine(0, combined);
            referenceOptimizer.Step(reference, combined);
        }

        Assert.Equal(3, job.Version);
        Assert.Equal(Bits(reference), Bits(job.WeightsAsFloats));
        Assert.NotEqual(Bits(initial), Bits(job.WeightsAsFloats));
    }

    [Fact]
    public async Task A_rank_that_aborts_mid_push_can_push_the_same_step_again_and_the_step_completes()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        var gradient0 = Filled(11, 1f);
        Begin(job, 0, 0, gradient0, sampleCount: 1);
        job.Received(0, 6); // partition 0 and part of partition 1, then the stream breaks
        job.AbortPush(0);

        Assert.Equal(0, Push(job, 1, 0, Filled(11, 3f), sampleCount: 3));
        await Task.Delay(50);
        Assert.Equal(0, job.Version);
        // Partition 0 has every rank's part, but rank 0's push is not whole: nothing is applied yet.
        Assert.False(job.WaitForPartitionAsync(0, 1, CancellationToken.None).IsCompleted);

        // The retry resends everything from the start.
        Begin(job, 0, 0, gradient0, sampleCount: 1);
        int[] retryReports = [4, 8, 11];
        foreach (int received in retryReports) job.Received(0, received);
        job.CompletePush(0);
        await Reached(job, 1);

        Assert.Equal(1, job.Version);
        Assert.Equal(0, job.RejectedGradients);
        // Mean of (1 * 1 + 3 * 3) / 4 = 2.5 on every partition.
        Assert.Equal([.. Sequence(11, 1f).Select(w => w - 2.5f)], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task A_push_completed_without_every_partition_can_be_pushed_again_and_the_step_completes()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        Begin(job, 0, 0, Filled(11, 2f), sampleCount: 1);
        job.Received(0, 8);
        Assert.ThrowsAny<PushRejectedException>(() => job.CompletePush(0));

        Assert.Equal(0, Push(job, 0, 0, Filled(11, 2f), sampleCount: 1));
        Push(job, 1, 0, Filled(11, 2f), sampleCount: 1);
        await Reached(job, 1);

        Assert.Equal([.. Sequence(11, 1f).Select(w => w - 2f)], job.WeightsAsFloats.ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_nan_in_one_ranks_partition_updates_that_partition_from_the_other_rank_only(bool badRankFirst)
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        var bad = Filled(11, 1f);
        bad[5] = float.NaN; // partition 1
        var good = Filled(11, 3f);

        PushRejectedException? error = null;
        if (badRankFirst) error = Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, bad, sampleCount: 1));
        Push(job, 1, 0, good, sampleCount: 3);
        if (!badRankFirst) error = Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, bad, sampleCount: 1));
        await Reached(job, 1);

        Assert.StartsWith("gradient: rank 0 step 0", error!.Message, StringComparison.Ordinal);
        Assert.Equal(1, job.Version);
        Assert.Equal(1, job.RejectedGradients);
        // Partitions 0 and 2: (1 * 1 + 3 * 3) / 4 = 2.5; partition 1: rank 1's 3 alone.
        Assert.Equal([-1.5f, -0.5f, 0.5f, 1.5f, 2f, 3f, 4f, 5f, 6.5f, 7.5f, 8.5f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task Exclusions_of_one_step_do_not_carry_over_to_the_next()
    {
        var job = NewJob(weights: Sequence(11, 1f), partitionElements: 4);
        var bad = Filled(11, 1f);
        bad[5] = float.PositiveInfinity;
        Assert.ThrowsAny<PushRejectedException>(() => Push(job, 0, 0, bad, sampleCount: 1));
        Push(job, 1, 0, Filled(11, 1f), sampleCount: 1);
        await Reached(job, 1);
        float[] afterStep0 = job.WeightsAsFloats.ToArray();
        Assert.Equal([.. Sequence(11, 0f)], afterStep0);

        Push(job, 0, 1, Filled(11, 1f), sampleCount: 1);
        Push(job, 1, 1, Filled(11, 3f), sampleCount: 1);
        await Reached(job, 2);

        Assert.Equal(2, job.Version);
        Assert.Equal(1, job.RejectedGradients);
        Assert.Equal([.. afterStep0.Select(w => w - 2f)], job.WeightsAsFloats.ToArray());
    }

    private static float[] RandomVector(Random random, int length) =>
        [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1))];

    [Fact]
    public async Task A_partition_every_rank_sent_with_nan_is_not_moved_even_by_weight_decay()
    {
        var decaying = new OptimizerSettings { Kind = "sgd", LearningRate = 0.1, WeightDecay = 0.5, Momentum = 0.9 };
        var job = NewJob(worldSize: 2, optimizer: decaying);

        Begin(job, 0, 0, Filled(4, float.NaN), 1);
        Begin(job, 1, 0, Filled(4, float.PositiveInfinity), 1);
        job.Received(0, 4);
        job.Received(1, 4);
        await Reached(job, 1);

        Assert.Equal(InitialWeights, job.WeightsAsFloats.ToArray());
        Assert.Equal(2, job.RejectedGradients);
    }
}
