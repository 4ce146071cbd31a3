using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Optimizers;

/// <summary>
/// Parameter groups: each key range is updated by its own optimizer with its own state, exactly
/// as separate optimizers over the separate ranges would, however a step's range is cut (the
/// servers apply partitions, and a server's key range may start inside a group).
/// </summary>
[Trait("Tier", "unit")]
public sealed class OptimizerGroupsTests
{
    private static readonly OptimizerSettings Fallback = new() { Kind = "sgd", LearningRate = 0.1 };
    private static readonly OptimizerSettings GeneratorAdam = new() { Kind = "adam", LearningRate = 2e-4, Beta1 = 0.5 };
    private static readonly OptimizerSettings DiscriminatorAdam = new() { Kind = "adam", LearningRate = 1e-3, Beta1 = 0.5 };

    // Elements [0, 10) generator, [10, 25) discriminator, [25, 30) no group (fallback).
    private static readonly OptimizerGroup[] Groups =
        [new("generator", 0, 10, GeneratorAdam), new("discriminator", 10, 15, DiscriminatorAdam)];

    [Theory]
    [InlineData(0, 30, 30)]  // one server, one partition
    [InlineData(0, 30, 4)]   // partitions that straddle group boundaries
    [InlineData(7, 20, 3)]   // a server range starting inside the generator
    public void Each_group_steps_like_its_own_optimizer_over_its_range(int rangeStart, int rangeElements, int partition)
    {
        const int total = 30, steps = 5;
        var random = new Random(3);
        float[] initial = [.. Enumerable.Range(0, total).Select(_ => (float)random.NextDouble())];
        float[][] gradients = [.. Enumerable.Range(0, steps).Select(_ => Enumerable.Range(0, total).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray())];

        // Reference: three separate optimizers over the whole vector's three ranges.
        float[] expected = (float[])initial.Clone();
        var separate = new (int Start, int Length, IOptimizer Optimizer)[]
        {
            (0, 10, GeneratorAdam.Create(10)), (10, 15, DiscriminatorAdam.Create(15)), (25, 5, Fallback.Create(5)),
        };
        foreach (float[] gradient in gradients)
            foreach (var (start, length, optimizer) in separate)
                optimizer.Step(expected.AsSpan(start, length), ((float[])gradient.Clone()).AsSpan(start, length));

        float[] actual = initial[rangeStart..(rangeStart + rangeElements)];
        var grouped = OptimizerGroups.Create(Fallback, Groups, rangeStart, rangeElements);
        for (int step = 0; step < steps; step++)
        {
            float[] gradient = gradients[step][rangeStart..(rangeStart + rangeElements)];
            for (int offset = 0; offset < rangeElements; offset += partition)
            {
                int length = Math.Min(partition, rangeElements - offset);
                grouped.StepRange(offset, actual.AsSpan(offset, length), gradient.AsSpan(offset, length), step + 1);
            }
        }
        Assert.Equal(expected[rangeStart..(rangeStart + rangeElements)], actual);
    }

    [Fact]
    public void Overlapping_or_out_of_range_groups_are_refused_naming_the_group()
    {
        OptimizerGroup[] overlapping = [new("a", 0, 10, Fallback), new("b", 5, 10, Fallback)];
        Assert.Contains(OptimizerGroups.Validate(overlapping, 100), e => e.StartsWith("groups.b: starts at 5", StringComparison.Ordinal));
        OptimizerGroup[] outside = [new("c", 90, 20, Fallback)];
        Assert.Contains(OptimizerGroups.Validate(outside, 100), e => e.StartsWith("groups.c: elements [90, 110) are out of range", StringComparison.Ordinal));
        OptimizerGroup[] badLr = [new("d", 0, 10, Fallback with { LearningRate = -1 })];
        Assert.Contains(OptimizerGroups.Validate(badLr, 100), e => e.StartsWith("groups.d.lr: -1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_parameter_server_job_keeps_separate_state_per_group()
    {
        // Two groups of 2 elements with Adam: after one step each element moves by lr (Adam's first step is lr * sign).
        var job = new JobParameters("job-g", 1, new TensorLayout(), Fallback, [0f, 0f, 0f, 0f], partitionElements: 3,
            groups: [new("g", 0, 2, new OptimizerSettings { Kind = "adam", LearningRate = 0.5 }), new("d", 2, 2, new OptimizerSettings { Kind = "adam", LearningRate = 0.25 })]);
        new float[] { 1, -1, 1, -1 }.CopyTo(job.BeginPush(0, 0, 1).Span);
        job.Received(0, 4);
        job.CompletePush(0);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal([-0.5f, 0.5f, -0.25f, 0.25f], job.WeightsAsFloats.ToArray(), (a, b) => Math.Abs(a - b) < 1e-6);
        job.Close();
    }
}
