using System.Runtime.InteropServices;
using Cluster.ParameterServer.Aggregation;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// <see cref="StepAggregator"/>: the sample-weighted mean of every rank's mean gradient, in
/// rank order, which equals the mean gradient over all the step's samples.
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
            aggregator.MarkArrived(rank, sampleCounts[rank]);
        }

        var combined = new float[ElementCount];
        aggregator.Combine(combined);

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
                aggregator.MarkArrived(rank, sampleCounts[rank]);
            }
            var combined = new float[ElementCount];
            aggregator.Combine(combined);
            return Bits(combined);
        }).ToList();

        Assert.Equal(results[0], results[1]);
        Assert.Equal(results[0], results[2]);
    }

    [Fact]
    public void Ranks_with_zero_samples_are_ignored()
    {
        var aggregator = new StepAggregator(3, 2);
        Write(aggregator, 0, [1f, 2f]);
        Write(aggregator, 1, [1e6f, -1e6f]); // would dominate the result if it were counted
        Write(aggregator, 2, [5f, 6f]);
        aggregator.MarkArrived(0, 10);
        aggregator.MarkArrived(1, 0);
        aggregator.MarkArrived(2, 30);

        var combined = new float[2];
        aggregator.Combine(combined);

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
        aggregator.MarkArrived(2, 0);
        aggregator.MarkArrived(1, 17);
        aggregator.MarkArrived(0, 0);

        var combined = new float[ElementCount];
        aggregator.Combine(combined);

        Assert.Equal(Bits(gradient), Bits(combined));
    }

    [Fact]
    public void All_zero_sample_counts_give_a_zero_gradient()
    {
        var aggregator = new StepAggregator(2, 3);
        Write(aggregator, 0, [1f, 2f, 3f]);
        Write(aggregator, 1, [4f, 5f, 6f]);
        aggregator.MarkArrived(0, 0);
        aggregator.MarkArrived(1, 0);

        float[] combined = [7f, 7f, 7f];
        aggregator.Combine(combined);

        Assert.Equal([0f, 0f, 0f], combined);
    }

    [Fact]
    public void Combine_before_every_rank_arrived_throws_and_names_the_count()
    {
        var aggregator = new StepAggregator(3, 4);
        aggregator.MarkArrived(1, 8);

        var error = Assert.Throws<InvalidOperationException>(() => aggregator.Combine(new float[4]));

        Assert.Equal("only 1 of 3 ranks have pushed", error.Message);
        Assert.False(aggregator.IsComplete);
        Assert.True(aggregator.HasArrived(1));
    }

    [Fact]
    public void Marking_a_rank_twice_in_one_step_throws()
    {
        var aggregator = new StepAggregator(2, 4);
        aggregator.MarkArrived(0, 8);

        var error = Assert.Throws<InvalidOperationException>(() => aggregator.MarkArrived(0, 8));

        Assert.Equal("rank 0 already pushed this step", error.Message);
    }

    [Fact]
    public void Combine_resets_for_the_next_step_which_uses_only_the_new_gradients()
    {
        var aggregator = new StepAggregator(2, 2);
        Write(aggregator, 0, [2f, 4f]);
        Write(aggregator, 1, [6f, 8f]);
        aggregator.MarkArrived(0, 1);
        aggregator.MarkArrived(1, 1);
        var first = new float[2];
        aggregator.Combine(first);

        Assert.False(aggregator.IsComplete);
        Assert.False(aggregator.HasArrived(0));
        Assert.False(aggregator.HasArrived(1));
        Assert.Throws<InvalidOperationException>(() => aggregator.Combine(new float[2]));

        Write(aggregator, 0, [10f, 20f]);
        Write(aggregator, 1, [30f, 40f]);
        aggregator.MarkArrived(1, 3);
        aggregator.MarkArrived(0, 1);
        var second = new float[2];
        aggregator.Combine(second);

        Assert.Equal([4f, 6f], first);
        // (1 * 10 + 3 * 30) / 4 = 25, (1 * 20 + 3 * 40) / 4 = 35.
        Assert.Equal([25f, 35f], second);
    }

    private static void Write(StepAggregator aggregator, int rank, float[] gradient) =>
        MemoryMarshal.AsBytes(gradient.AsSpan()).CopyTo(aggregator.BufferFor(rank).Span);

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
}
