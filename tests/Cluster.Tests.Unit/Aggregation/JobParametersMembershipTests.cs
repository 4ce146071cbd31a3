using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// Elastic BSP on <see cref="JobParameters"/>: removed ranks stop counting (a partial push is
/// discarded, a complete one still counts), joining ranks count from a step boundary, and every
/// applied step records the ranks that made it up.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobParametersMembershipTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);
    private static readonly OptimizerSettings PlainSgd = new() { Kind = "sgd", LearningRate = 1 };

    private static JobParameters NewJob(int worldSize = 2, OptimizerSettings? optimizer = null) =>
        new("job-9", worldSize, new TensorLayout(), optimizer ?? PlainSgd, [1f, 2f, 3f, 4f, 5f], partitionElements: 2);

    private static void Push(JobParameters job, int rank, long step, float value, int sampleCount)
    {
        Enumerable.Repeat(value, job.ElementCount).ToArray().CopyTo(job.BeginPush(rank, step, sampleCount).Span);
        job.Received(rank, job.ElementCount);
        job.CompletePush(rank);
    }

    private static Task Reached(JobParameters job, long version) => job.WaitForVersionAsync(version, CancellationToken.None).WaitAsync(Patience);

    [Fact]
    public async Task A_rank_removed_mid_push_is_left_out_whole_and_the_step_goes_on_without_it()
    {
        var job = NewJob();
        Enumerable.Repeat(100f, 5).ToArray().CopyTo(job.BeginPush(0, 0, 1).Span);
        job.Received(0, 2); // one partition of three, then the worker dies
        Push(job, 1, 0, 1f, 1);

        Assert.Equal(0L, job.RemoveRank(0));
        await Reached(job, 1);

        Assert.Equal([0f, 1f, 2f, 3f, 4f], job.WeightsAsFloats.ToArray()); // rank 1's gradient only
        Assert.Equal([(0L, new[] { 1 })], job.AppliedSteps(0).Select(a => (a.Step, a.Ranks)));
        job.Received(0, 5); // the dead stream's late chunks change nothing
        var refused = Assert.Throws<PushRejectedException>(() => job.BeginPush(0, 1, 1));
        Assert.Equal("rank: 0 is not a member of step 1 of job job-9; it was removed from step 0 on", refused.Message);
        Push(job, 1, 1, 1f, 1);
        await Reached(job, 2);
        Assert.Equal([1], job.Members(2));
    }

    [Fact]
    public async Task A_rank_removed_after_its_push_was_complete_still_counts_in_that_step()
    {
        var job = NewJob();
        Push(job, 0, 0, 3f, 1);

        Assert.Equal(1L, job.RemoveRank(0));
        Assert.Null(job.RemoveRank(0));
        Push(job, 1, 0, 1f, 1);
        await Reached(job, 1);

        Assert.Equal([-1f, 0f, 1f, 2f, 3f], job.WeightsAsFloats.ToArray()); // mean of 3 and 1
        Assert.Equal([0, 1], job.AppliedSteps(0).Single().Ranks);
    }

    [Fact]
    public async Task A_joining_rank_counts_from_its_step_on_with_its_samples_in_the_mean()
    {
        var job = NewJob();
        Assert.Equal((true, 0L), job.JoinRank(2, fromStep: 1));
        Push(job, 0, 0, 1f, 1);
        Push(job, 1, 0, 1f, 1);
        await Reached(job, 1);
        Assert.Equal([0, 1], job.AppliedSteps(0).Single().Ranks);

        Push(job, 0, 1, 1f, 1);
        Push(job, 1, 1, 1f, 1);
        await Task.Delay(50);
        Assert.Equal(1, job.Version); // waits for the joiner
        Push(job, 2, 1, 4f, 2);
        await Reached(job, 2);

        // Step 1: (1 + 1 + 2 * 4) / 4 = 2.5.
        Assert.Equal([-2.5f, -1.5f, -0.5f, 0.5f, 1.5f], job.WeightsAsFloats.ToArray());
        Assert.Equal([(0L, new[] { 0, 1 }), (1L, new[] { 0, 1, 2 })], job.AppliedSteps(1).Select(a => (a.Step, a.Ranks)));
    }

    [Fact]
    public async Task A_join_at_a_step_already_passed_is_refused_with_the_current_version()
    {
        var job = NewJob();
        Push(job, 0, 0, 1f, 1);
        Push(job, 1, 0, 1f, 1);
        await Reached(job, 1);

        Assert.Equal((false, 1L), job.JoinRank(2, fromStep: 0));
        var refused = Assert.Throws<PushRejectedException>(() => job.JoinRank(1, fromStep: 2));
        Assert.Equal("rank: 1 is already a member of job job-9", refused.Message);
    }

    [Fact]
    public async Task A_step_without_samples_moves_no_weight_even_with_momentum()
    {
        var job = NewJob(optimizer: new OptimizerSettings { Kind = "sgd", LearningRate = 1, Momentum = 0.9 });
        Push(job, 0, 0, 1f, 1);
        Push(job, 1, 0, 1f, 1);
        await Reached(job, 1);
        float[] after = job.WeightsAsFloats.ToArray();

        Push(job, 0, 1, 0f, 0);
        Push(job, 1, 1, 0f, 0);
        await Reached(job, 2);

        Assert.Equal(after, job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task A_step_nobody_is_a_member_of_passes_empty_when_a_joiner_waits_for_the_next()
    {
        var job = NewJob(worldSize: 1);
        job.JoinRank(1, fromStep: 1);

        job.RemoveRank(0);
        await Reached(job, 1);

        Assert.Empty(job.AppliedSteps(0).Single().Ranks);
        Push(job, 1, 1, 1f, 1);
        await Reached(job, 2);
        Assert.Equal([0f, 1f, 2f, 3f, 4f], job.WeightsAsFloats.ToArray());
    }
}
