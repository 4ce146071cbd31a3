using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// Sync modes SSP and ASP of <see cref="JobParameters"/>: every push is applied on its own as it
/// arrives; under SSP a rank's pull for a step more than the staleness ahead of the slowest rank
/// waits for it, under ASP nothing waits.
/// </summary>
[Trait("Tier", "unit")]
public sealed class AsyncSyncModeTests
{
    private static readonly OptimizerSettings PlainSgd = new() { Kind = "sgd", LearningRate = 1 };
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);

    private static JobParameters NewJob(string sync, int staleness = 0) =>
        new("job-async", 2, new TensorLayout(), PlainSgd, [10f, 10f, 10f], partitionElements: 2) { SyncMode = sync, Staleness = staleness };

    private static long Push(JobParameters job, int rank, long step, float value)
    {
        float[] gradient = [value, value, value];
        gradient.CopyTo(job.BeginPush(rank, step, 1).Span);
        job.Received(rank, gradient.Length);
        return job.CompletePush(rank);
    }

    private static Task Pull(JobParameters job, long step) => job.WaitForVersionAsync(step, CancellationToken.None);

    [Fact]
    public async Task Under_asp_each_push_is_one_update_and_no_pull_waits_for_the_other_rank()
    {
        var job = NewJob(JobParameters.Asp);

        Assert.Equal(1, Push(job, 0, 0, 1f));
        Assert.Equal(2, Push(job, 0, 1, 2f));
        Assert.Equal(3, Push(job, 0, 2, 3f));
        await Pull(job, 3).WaitAsync(Patience); // rank 0 runs on although rank 1 pushed nothing

        Assert.Equal([4f, 4f, 4f], job.WeightsAsFloats.ToArray());
        Assert.Equal(4, Push(job, 1, 0, 4f));
        Assert.Equal([0f, 0f, 0f], job.WeightsAsFloats.ToArray());
        Assert.Equal(2, job.MaxLeadSteps); // rank 0 pushed step 2 while rank 1 had pushed none
    }

    [Fact]
    public async Task Under_ssp_a_rank_waits_once_it_is_staleness_steps_ahead_and_goes_on_when_the_slowest_pushes()
    {
        var job = NewJob(JobParameters.Ssp, staleness: 2);

        Push(job, 0, 0, 1f);
        await Pull(job, 1).WaitAsync(Patience);
        Push(job, 0, 1, 1f);
        await Pull(job, 2).WaitAsync(Patience); // step 2 is 2 ahead of rank 1's clock 0: allowed
        Push(job, 0, 2, 1f);
        var third = Pull(job, 3); // step 3 would be 3 ahead
        await Task.Delay(100);
        Assert.False(third.IsCompleted);

        Push(job, 1, 0, 1f);
        await third.WaitAsync(Patience);
        Assert.Equal(4, job.Version);
        Assert.Equal(2, job.MaxLeadSteps);
        Assert.Equal([6f, 6f, 6f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public void Under_ssp_a_repeated_push_is_a_duplicate_and_a_push_ahead_of_the_ranks_clock_names_it()
    {
        var job = NewJob(JobParameters.Ssp, staleness: 1);
        Push(job, 0, 0, 1f);

        Assert.Equal(1, Push(job, 0, 0, 7f));
        Assert.Equal(1, job.DuplicatePushes);
        Assert.Equal([9f, 9f, 9f], job.WeightsAsFloats.ToArray());
        var error = Assert.Throws<StepMismatchException>(() => job.BeginPush(1, 3, 1));
        Assert.StartsWith("step: 3 is not the current step", error.Message, StringComparison.Ordinal);
    }
}
