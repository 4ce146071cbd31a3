using Cluster.ParameterServer.Aggregation;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// <see cref="StepAggregator"/>: the sample-weighted mean of every rank's mean gradient, in
/// rank order, which equals the mean gradient over all the step's samples; any range of the
/// vector can be combined on its own, and excluded ranks leave the mean with their samples.
/// </summary>
[Trait("Tier", "unit")]
public sealed class StepAggregatorTests
{
    private const int ElementCount = 1000;

    [Fact]
    public void Weighted_mean_by_sample_counts_equals_the_mean_over_all_samples()
    {
        int[] sampleCounts = [64, 64, 17];
        var random = new Random(1);
        // Per-sample gradients; each rank sends the float mean over its own samples.
        double[][][] perSample = [.. sampleCounts.Select(n => RandomMatrix(random, n, ElementCount))];
        var aggregator = new StepAggregator(sampleCounts.Length, ElementCount);
        for (int rank = 0; rank < sampleCounts.Length; rank++)
        {
            Write(aggregator, rank, MeanOverSamples(perSample[rank]));
            aggregator.SetSampleCount(rank, sampleCounts[rank]);
        }

        var combined = new float[ElementCount];
        aggregator.Combine(0, combined);

        double[] reference = MeanOverSamplesDouble([.. perSample.SelectMany(rows => rows)]);
        double[] unweighted = MeanOverSamplesDouble([.. perSample.Select(MeanOverSamplesDouble)]);
        double largestError = 0, largestWeightingEffect = 0;
        for (int i = 0; i < ElementCount; i++)
        {
            largestError = Math.Max(largestError, Math.Abs(combined[i] - reference[i]));
            largestWeightingEffect = Math.Max(largestWeightingEffect, Math.Abs(unweighted[i] - reference[i]));
        }
        Assert.True(largestError <= 1e-6, $"largest |combined - mean over all samples| is {largestError:E3}; expected <= 1e-6");
        // The counts differ, so a plain mean of the rank means would be measurably wrong.
        Assert.True(largestWeightingEffect > 1e-3, $"unweighted mean differs by only {largestWeightingEffect:E3}");
    }

    [Fact]
    public void Result_is_bitwise_identical_whatever_the_arrival_order()
    {
        int[] sampleCounts = [32, 31, 5, 32];
        var random = new Random(2);
        float[][] gradients = [.. sampleCounts.Select(_ => RandomVector(random, ElementCount))];
        int[][] orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]];

        var results = orders.Select(order =>
        {
            var aggregator = new StepAggregator(sampleCounts.Length, ElementCount);
            foreach (int rank in order)
            {
                Write(aggregator, rank, gradients[rank]);
                aggregator.SetSampleCount(rank, sampleCounts[rank]);
            }
            var combined = new float[ElementCount];
            aggregator.Combine(0, combined);
            return Bits(combined);
        }).ToList();

        Assert.Equal(results[0], results[1]);
        Assert.Equal(results[0], results[2]);
        Assert.Contains(results[0], bits => bits != 0);
    }

    [Fact]
    public void Combining_ranges_separately_gives_the_same_bits_as_combining_the_whole_vector()
    {
        int[] sampleCounts = [7, 25, 13];
        var random = new Random(5);
        var aggregator = new StepAggregator(sampleCounts.Length, ElementCount);
        for (int rank = 0; rank < sampleCounts.Length; rank++)
        {
            Write(aggregator, rank, RandomVector(random, ElementCount));
            aggregator.SetSampleCount(rank, sampleCounts[rank]);
        }
        var whole = new float[ElementCount];
        aggregator.Combine(0, whole);

        // Ranges of odd lengths, so SIMD blocks and scalar tails fall on different elements.
        var pieced = new float[ElementCount];
        int[] cuts = [0, 3, 37, 38, 500, 517, 999, ElementCount];
        for (int i = 0; i + 1 < cuts.Length; i++)
            aggregator.Combine(cuts[i], pieced.AsSpan(cuts[i], cuts[i + 1] - cuts[i]));

        Assert.Equal(Bits(whole), Bits(pieced));
    }

    [Fact]
    public void Combining_a_range_writes_only_the_destination_and_uses_only_that_range_of_each_gradient()
    {
        var aggregator = new StepAggregator(2, 6);
        Write(aggregator, 0, [1f, 2f, 3f, 4f, 5f, 6f]);
        Write(aggregator, 1, [10f, 20f, 30f, 40f, 50f, 60f]);
        aggregator.SetSampleCount(0, 1);
        aggregator.SetSampleCount(1, 1);

        float[] combined = [-1f, -1f, -1f, -1f, -1f, -1f];
        aggregator.Combine(2, combined.AsSpan(2, 3));

        // (3 + 30) / 2, (4 + 40) / 2, (5 + 50) / 2; the elements around the range are untouched.
        Assert.Equal([-1f, -1f, 16.5f, 22f, 27.5f, -1f], combined);
    }

    [Fact]
    public void Ranks_with_zero_samples_are_ignored()
    {
        var aggregator = new StepAggregator(3, 2);
        Write(aggregator, 0, [1f, 2f]);
        Write(aggregator, 1, [1e6f, -1e6f]); // would dominate the result if it were counted
        Write(aggregator, 2, [5f, 6f]);
        aggregator.SetSampleCount(0, 10);
        aggregator.SetSampleCount(1, 0);
        aggregator.SetSampleCount(2, 30);

        var combined = new float[2];
        aggregator.Combine(0, combined);

        // (10 * 1 + 30 * 5) / 40 = 4, (10 * 2 + 30 * 6) / 40 = 5.
        Assert.Equal([4f, 5f], combined);
    }

    [Fact]
    public void A_single_rank_holding_every_sample_passes_its_gradient_through_unchanged()
    {
        var gradient = RandomVector(new Random(3), ElementCount);
        var aggregator = new StepAggregator(3, ElementCount);
        Write(aggregator, 0, RandomVector(new Random(4), ElementCount));
        Write(aggregator, 1, gradient);
        aggregator.SetSampleCount(2, 0);
        aggregator.SetSampleCount(1, 17);
        aggregator.SetSampleCount(0, 0);

        var combined = new float[ElementCount];
        aggregator.Combine(0, combined);

        Assert.Equal(Bits(gradient), Bits(combined));
    }

    [Fact]
    public void A_single_rank_taking_part_lends_its_own_buffer_and_several_ranks_are_combined_into_the_scratch()
    {
        var aggregator = new StepAggregator(3, 4);
        Write(aggregator, 0, [1f, 2f, 3f, 4f]);
        Write(aggregator, 1, [float.NaN, 0f, 0f, 0f]);
        Write(aggregator, 2, [5f, 6f, 7f, 8f]);
        aggregator.SetSampleCount(0, 0);
        aggregator.SetSampleCount(1, 9);
        aggregator.SetSampleCount(2, 3);
        var scratch = new float[2];

        // Rank 0 has no samples and rank 1 is excluded: rank 2's elements [1, 3), as they are.
        var sole = aggregator.Combined(1, scratch, [false, true, false]);
        Assert.Equal([6f, 7f], sole.ToArray());
        sole[0] = -6f; // the rank's buffer itself, not a copy
        Assert.Equal(-6f, aggregator.BufferFor(2).Span[1]);
        Assert.Equal([0f, 0f], scratch);

        // Ranks 1 and 2 both take part: combined into the scratch, as Combine writes them.
        Write(aggregator, 1, [0f, 2f, 3f, 0f]);
        var both = aggregator.Combined(1, scratch);
        var expected = new float[2];
        aggregator.Combine(1, expected);
        Assert.True(both.Overlaps(scratch));
        Assert.Equal(expected, both.ToArray());

        // Nobody takes part: zeros.
        Assert.Equal([0f, 0f], aggregator.Combined(1, scratch, [true, true, true]).ToArray());
    }

    [Fact]
    public void All_zero_sample_counts_give_a_zero_gradient()
    {
        var aggregator = new StepAggregator(2, 3);
        Write(aggregator, 0, [1f, 2f, 3f]);
        Write(aggregator, 1, [4f, 5f, 6f]);
        aggregator.SetSampleCount(0, 0);
        aggregator.SetSampleCount(1, 0);

        float[] combined = [7f, 7f, 7f];
        aggregator.Combine(0, combined);

        Assert.Equal([0f, 0f, 0f], combined);
    }

    [Fact]
    public void An_excluded_rank_takes_no_part_and_its_samples_leave_the_mean()
    {
        var aggregator = new StepAggregator(3, 2);
        Write(aggregator, 0, [1f, 2f]);
        Write(aggregator, 1, [float.NaN, float.PositiveInfinity]); // would poison the result if it were read
        Write(aggregator, 2, [5f, 6f]);
        aggregator.SetSampleCount(0, 10);
        aggregator.SetSampleCount(1, 1000);
        aggregator.SetSampleCount(2, 30);

        var combined = new float[2];
        aggregator.Combine(0, combined, [false, true, false]);

        // As if rank 1 had not pushed: (10 * 1 + 30 * 5) / 40 = 4, (10 * 2 + 30 * 6) / 40 = 5.
        Assert.Equal([4f, 5f], combined);
    }

    [Fact]
    public void Excluding_every_rank_gives_a_zero_gradient()
    {
        var aggregator = new StepAggregator(2, 2);
        Write(aggregator, 0, [1f, 2f]);
        Write(aggregator, 1, [3f, 4f]);
        aggregator.SetSampleCount(0, 4);
        aggregator.SetSampleCount(1, 4);

        float[] combined = [9f, 9f];
        aggregator.Combine(0, combined, [true, true]);

        Assert.Equal([0f, 0f], combined);
    }

    [Fact]
    public void An_empty_exclusion_list_excludes_no_rank()
    {
        var aggregator = new StepAggregator(2, 2);
        Write(aggregator, 0, [2f, 4f]);
        Write(aggregator, 1, [6f, 8f]);
        aggregator.SetSampleCount(0, 1);
        aggregator.SetSampleCount(1, 1);

        var withDefault = new float[2];
        var withNoneExcluded = new float[2];
        aggregator.Combine(0, withDefault);
        aggregator.Combine(0, withNoneExcluded, [false, false]);

        Assert.Equal([4f, 6f], withDefault);
        Assert.Equal(withDefault, withNoneExcluded);
    }

    [Fact]
    public void A_negative_sample_count_is_rejected()
    {
        var aggregator = new StepAggregator(2, 2);

        Assert.Throws<ArgumentOutOfRangeException>(() => aggregator.SetSampleCount(0, -1));
    }

    [Fact]
    public void Buffers_are_reused_and_the_next_step_uses_only_the_new_gradients_and_counts()
    {
        var aggregator = new StepAggregator(2, 2);
        var buffer0 = aggregator.BufferFor(0);
        Write(aggregator, 0, [2f, 4f]);
        Write(aggregator, 1, [6f, 8f]);
        aggregator.SetSampleCount(0, 1);
        aggregator.SetSampleCount(1, 1);
        var first = new float[2];
        aggregator.Combine(0, first);

        Write(aggregator, 0, [10f, 20f]);
        Write(aggregator, 1, [30f, 40f]);
        aggregator.SetSampleCount(1, 3);
        aggregator.SetSampleCount(0, 1);
        var second = new float[2];
        aggregator.Combine(0, second);

        Assert.Equal([4f, 6f], first);
        // (1 * 10 + 3 * 30) / 4 = 25, (1 * 20 + 3 * 40) / 4 = 35.
        Assert.Equal([25f, 35f], second);
        Assert.True(buffer0.Span.Overlaps(aggregator.BufferFor(0).Span), "rank 0's buffer was reallocated");
        Assert.Equal([10f, 20f], buffer0.ToArray());
    }

    [Fact]
    public void Each_rank_has_its_own_buffer_of_the_vector_length()
    {
        var aggregator = new StepAggregator(3, 5);

        Assert.Equal(3, aggregator.WorldSize);
        Assert.All(Enumerable.Range(0, 3), rank => Assert.Equal(5, aggregator.BufferFor(rank).Length));
        Assert.False(aggregator.BufferFor(0).Span.Overlaps(aggregator.BufferFor(1).Span));
        Assert.False(aggregator.BufferFor(1).Span.Overlaps(aggregator.BufferFor(2).Span));
    }

    private static void Write(StepAggregator aggregator, int rank, float[] gradient) =>
        gradient.CopyTo(aggregator.BufferFor(rank).Span);

    private static int[] Bits(float[] values) => [.. values.Select(BitConverter.SingleToInt32Bits)];

    private static float[] RandomVector(Random random, int length) =>
        [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1))];

    private static double[][] RandomMatrix(Random random, int rows, int columns) =>
        [.. Enumerable.Range(0, rows).Select(_ => Enumerable.Range(0, columns).Select(_ => random.NextDouble() * 2 - 1).ToArray())];

    private static float[] MeanOverSamples(double[][] samples) => [.. MeanOverSamplesDouble(samples).Select(v => (float)v)];

    private static double[] MeanOverSamplesDouble(double[][] samples)
    {
        var mean = new double[samples[0].Length];
        foreach (double[] sample in samples)
            for (int i = 0; i < mean.Length; i++) mean[i] += sample[i];
        for (int i = 0; i < mean.Length; i++) mean[i] /= samples.Length;
        return mean;
    }

    [Fact]
    public void A_rank_whose_weight_rounds_to_one_does_not_overwrite_the_others()
    {
        // Regression: weight 1f once took a copy shortcut that discarded earlier ranks.
        var aggregator = new StepAggregator(worldSize: 2, elementCount: 1);
        aggregator.BufferFor(0).Span[0] = 1e6f;
        aggregator.BufferFor(1).Span[0] = 0f;
        aggregator.SetSampleCount(0, 1);
        aggregator.SetSampleCount(1, 100_000_000);
        var combined = new float[1];

        aggregator.Combine(0, combined);

        Assert.InRange(combined[0], 0.009f, 0.011f);
    }
}
