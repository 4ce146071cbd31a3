using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// Pushes are deduplicated by (job, rank, step, partition): a retry after a lost reply, whole or
/// after part of the push got through, is acknowledged and nothing of it is applied twice; a push
/// for a step the server has not reached names the server's version.
/// </summary>
[Trait("Tier", "unit")]
public sealed class IdempotentPushTests
{
    private static readonly OptimizerSettings PlainSgd = new() { Kind = "sgd", LearningRate = 1 };
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);

    private static JobParameters NewJob(int worldSize, float[] weights, int partitionElements) =>
        new("job-dup", worldSize, new TensorLayout(), PlainSgd, [.. weights], partitionElements: partitionElements);

    private static long Push(JobParameters job, int rank, long step, float[] gradient, int sampleCount = 1)
    {
        gradient.CopyTo(job.BeginPush(rank, step, sampleCount).Span);
        job.Received(rank, gradient.Length);
        return job.CompletePush(rank);
    }

    [Fact]
    public async Task A_retry_after_part_of_a_push_got_through_keeps_the_partitions_already_delivered()
    {
        // Three partitions of 2, 2 and 1 elements.
        var job = NewJob(worldSize: 1, weights: [10f, 10f, 10f, 10f, 10f], partitionElements: 2);
        float[] first = [1f, 1f, 2f, 2f, 3f];
        first.CopyTo(job.BeginPush(0, 0, 1).Span);
        job.Received(0, 2); // partition 0 arrived, then the stream broke
        job.AbortPush(0);
        // Whole pushes only: nothing of a partial push is applied.
        Assert.Equal(0, job.Version);
        Assert.Equal([10f, 10f, 10f, 10f, 10f], job.WeightsAsFloats.ToArray());

        // The retry sends other values for partition 0: the delivered partition is kept, not replaced.
        Push(job, 0, 0, [100f, 100f, 2f, 2f, 3f]);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Patience);

        Assert.Equal([9f, 9f, 8f, 8f, 7f], job.WeightsAsFloats.ToArray());
        Assert.Equal(1, job.Version);
    }

    [Fact]
    public async Task A_whole_push_repeated_while_the_step_waits_for_other_ranks_is_applied_once()
    {
        var job = NewJob(worldSize: 2, weights: [0f, 0f, 0f], partitionElements: 2);
        Push(job, 0, 0, [2f, 2f, 2f]);
        Push(job, 0, 0, [2f, 2f, 2f]);
        Push(job, 0, 0, [2f, 2f, 2f]);
        Push(job, 1, 0, [4f, 4f, 4f]);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Patience);

        Assert.Equal([-3f, -3f, -3f], job.WeightsAsFloats.ToArray());
        Assert.Equal(2, job.DuplicatePushes);

        // Step 1 is not affected by the duplicates of step 0.
        Push(job, 1, 1, [1f, 1f, 1f]);
        Assert.Equal(1, Push(job, 1, 0, [50f, 50f, 50f])); // a late retry of an applied step
        Push(job, 0, 1, [1f, 1f, 1f]);
        await job.WaitForVersionAsync(2, CancellationToken.None).WaitAsync(Patience);
        Assert.Equal([-4f, -4f, -4f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public void A_push_for_a_step_the_server_has_not_reached_names_the_servers_version()
    {
        var job = NewJob(worldSize: 1, weights: [1f], partitionElements: 1);

        var error = Assert.Throws<StepMismatchException>(() => job.BeginPush(0, 5, 1));

        Assert.Equal(0, error.ServerVersion);
        Assert.StartsWith("step: 5 is not the current step 0", error.Message, StringComparison.Ordinal);
    }
}
