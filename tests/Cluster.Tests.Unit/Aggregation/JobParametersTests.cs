using System.Runtime.InteropServices;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// <see cref="JobParameters"/>: BSP pushes for the current step only, one per rank, finite
/// gradients only; the optimizer runs and the version advances once every rank has pushed.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobParametersTests
{
    private static readonly float[] InitialWeights = [1f, 2f, 3f, 4f];

    // Plain SGD with lr 1: new weights = weights - combined gradient, exact for these values.
    private static JobParameters NewJob(int worldSize = 2) =>
        new("job-7", worldSize, new TensorLayout(), new OptimizerSettings { Kind = "sgd", LearningRate = 1 },
            MemoryMarshal.AsBytes(InitialWeights.AsSpan()).ToArray());

    private static long Push(JobParameters job, int rank, long step, float[] gradient, int sampleCount)
    {
        MemoryMarshal.AsBytes(gradient.AsSpan()).CopyTo(job.BeginPush(rank, step).Span);
        return job.CompletePush(rank, step, sampleCount);
    }

    [Fact]
    public async Task When_every_rank_pushed_the_version_increments_and_waiters_complete()
    {
        var job = NewJob();
        var waiter = job.WaitForVersionAsync(1, CancellationToken.None);

        long afterFirst = Push(job, 1, 0, [3f, 3f, 3f, 3f], sampleCount: 3);
        Assert.Equal(0, afterFirst);
        Assert.False(waiter.IsCompleted);

        long afterSecond = Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        await waiter.WaitAsync(TimeSpan.FromSeconds(5));

        Assert.Equal(1, afterSecond);
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

        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
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

        var error = Assert.Throws<PushRejectedException>(() => job.BeginPush(0, step));

        Assert.StartsWith($"step: {step} ", error.Message, StringComparison.Ordinal);
        Assert.Contains("current step 0", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Completing_a_push_for_a_stale_step_is_rejected_naming_step()
    {
        var job = NewJob(worldSize: 1);
        Push(job, 0, 0, [0f, 0f, 0f, 0f], sampleCount: 1);

        var error = Assert.Throws<PushRejectedException>(() => job.CompletePush(0, 0, 1));

        Assert.StartsWith("step: 0 ", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, job.Version);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(-1)]
    [InlineData(int.MaxValue)]
    public void A_push_from_an_out_of_range_rank_is_rejected_naming_rank(int rank)
    {
        var job = NewJob();

        var begin = Assert.Throws<PushRejectedException>(() => job.BeginPush(rank, 0));
        var complete = Assert.Throws<PushRejectedException>(() => job.CompletePush(rank, 0, 1));

        Assert.StartsWith($"rank: {rank} is out of range", begin.Message, StringComparison.Ordinal);
        Assert.Contains("ranks 0 to 1", begin.Message, StringComparison.Ordinal);
        Assert.StartsWith($"rank: {rank} ", complete.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_second_push_from_the_same_rank_in_one_step_is_rejected_naming_rank()
    {
        var job = NewJob();
        Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 2);

        var error = Assert.Throws<PushRejectedException>(() => job.BeginPush(0, 0));

        Assert.StartsWith("rank: 0 already pushed step 0", error.Message, StringComparison.Ordinal);
        Assert.Equal(0, job.Version);
        Assert.Equal(InitialWeights, job.WeightsAsFloats.ToArray());
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void A_gradient_with_nan_or_inf_is_rejected_counted_and_not_applied(float bad)
    {
        var job = NewJob();
        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 1);

        var error = Assert.Throws<PushRejectedException>(() => Push(job, 0, 0, [0f, 0f, bad, 0f], sampleCount: 1));

        Assert.StartsWith("gradient: rank 0 step 0 contains NaN or Inf", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, job.RejectedGradients);
        Assert.Equal(0, job.Version);
        Assert.Equal(InitialWeights, job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public void After_a_rejected_gradient_the_rank_can_push_a_finite_one_and_the_step_completes()
    {
        var job = NewJob();
        Assert.Throws<PushRejectedException>(() => Push(job, 0, 0, [float.NaN, 0f, 0f, 0f], sampleCount: 1));

        Push(job, 0, 0, [2f, 2f, 2f, 2f], sampleCount: 1);
        long version = Push(job, 1, 0, [2f, 2f, 2f, 2f], sampleCount: 1);

        Assert.Equal(1, version);
        Assert.Equal(1, job.RejectedGradients);
        Assert.Equal([-1f, 0f, 1f, 2f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public void Consecutive_steps_each_need_every_rank_and_apply_in_turn()
    {
        var job = NewJob();
        Push(job, 0, 0, [1f, 1f, 1f, 1f], sampleCount: 1);
        Push(job, 1, 0, [1f, 1f, 1f, 1f], sampleCount: 1);

        Assert.Throws<PushRejectedException>(() => job.BeginPush(0, 0));
        Push(job, 1, 1, [0.5f, 0.5f, 0.5f, 0.5f], sampleCount: 2);
        Assert.Equal(1, job.Version);
        Push(job, 0, 1, [0.5f, 0.5f, 0.5f, 0.5f], sampleCount: 2);

        Assert.Equal(2, job.Version);
        Assert.Equal([-0.5f, 0.5f, 1.5f, 2.5f], job.WeightsAsFloats.ToArray());
    }
}
