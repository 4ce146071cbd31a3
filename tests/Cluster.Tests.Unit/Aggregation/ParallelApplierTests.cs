using Cluster.ParameterServer.Aggregation;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Tests.Unit.Wire;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// A BSP step's partitions are applied by several appliers at once. Each partition is still
/// applied by one applier from the step's gradients alone, so the weights and the optimizer
/// state must come out bit for bit as with a single applier, whatever mix of wire types, ranks
/// and refused partitions meets; and the state must not move while VersionReached runs, so that
/// a checkpoint taken there holds exactly the version it names.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ParallelApplierTests
{
    // Partitions that line up with neither the aggregation blocks nor a SIMD vector, many of them.
    private const int Partition = StepAggregator.BlockElements / 4 + 37;
    private const int Elements = 40 * Partition + 1001;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);
    private static readonly OptimizerSettings Adam = new() { Kind = "adam", LearningRate = 1e-3, WeightDecay = 0.01 };

    [Theory]
    [InlineData(new[] { DType.Bfloat16, DType.Float16, DType.Float32 }, false)] // combined, two ranks decoded block by block
    [InlineData(new[] { DType.Bfloat16 }, false)]                              // a sole bfloat16 rank, the pull copy written in the same pass
    [InlineData(new[] { DType.Float32 }, false)]                               // a sole float32 rank, stepped from its own buffer
    [InlineData(new[] { DType.Bfloat16, DType.Float16, DType.Float32 }, true)]  // and the pushing thread applying beside the appliers
    [InlineData(new[] { DType.Float32 }, true)]
    public async Task Partitions_applied_at_once_give_the_bits_of_one_applier(DType[] wire, bool pusherApplies)
    {
        float[] initial = Values(99, Elements);
        var parallel = new JobParameters("job-p", wire.Length, new TensorLayout(), Adam, [.. initial], partitionElements: Partition, appliers: 4);
        var single = new JobParameters("job-s", wire.Length, new TensorLayout(), Adam, [.. initial], partitionElements: Partition, appliers: 1);
        Assert.Equal(4, parallel.ApplierCount);
        parallel.KeepPullCopy(DType.Bfloat16);
        single.KeepPullCopy(DType.Bfloat16);

        for (long step = 0; step < 6; step++)
        {
            foreach (var job in new[] { parallel, single })
            {
                for (int rank = 0; rank < wire.Length; rank++)
                {
                    float[] gradient = WireValues.Carried(Values((int)step * 10 + rank, Elements), wire[rank]);
                    // Step 3: rank 0's partition 5 holds a NaN and is refused; the other ranks still make up the partition.
                    if (step == 3 && rank == 0) gradient[5 * Partition + 11] = float.NaN;
                    WireValues.StoreAsPushed(job.BeginPush(rank, step, 32 + rank, wire[rank]).Span, gradient, wire[rank]);
                    job.Received(rank, Elements, callerApplies: pusherApplies && job == parallel);
                    try { job.CompletePush(rank); }
                    catch (NonFiniteGradientException) { Assert.Equal((3, 0), (step, rank)); }
                }
                // As a data-port connection does once it has answered the push that completed the step: it wakes the appliers too.
                if (pusherApplies && job == parallel) job.ApplyQueuedPartitions();
                await job.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
            }
            Assert.Equal(Bits(single.WeightsAsFloats), Bits(parallel.WeightsAsFloats));
        }

        var (expected, actual) = (single.Snapshot(), parallel.Snapshot());
        Assert.Equal(expected.OptimizerState.Count, actual.OptimizerState.Count);
        for (int i = 0; i < expected.OptimizerState.Count; i++)
            Assert.Equal(Bits(expected.OptimizerState[i].Values), Bits(actual.OptimizerState[i].Values));
        for (int p = 0; p < parallel.PartitionCount; p++)
            Assert.Equal(single.PullCopyOf(p, DType.Bfloat16)!.Value.ToArray(), parallel.PullCopyOf(p, DType.Bfloat16)!.Value.ToArray());
        Assert.NotEqual(Bits(initial), Bits(parallel.WeightsAsFloats));
        Assert.Equal(1, parallel.RejectedGradients);
    }

    [Fact]
    public async Task A_snapshot_taken_as_a_version_is_reached_holds_that_version_while_the_next_step_is_already_pushed()
    {
        float[] initial = Values(5, Elements);
        var parallel = new JobParameters("job-p", 1, new TensorLayout(), Adam, [.. initial], partitionElements: Partition, appliers: 4);
        var single = new JobParameters("job-s", 1, new TensorLayout(), Adam, [.. initial], partitionElements: Partition, appliers: 1);
        var snapshots = new Dictionary<long, int[]>();
        var expected = new Dictionary<long, int[]>();
        parallel.VersionReached = (job, version) =>
        {
            // Long enough for the test to push the next step whole meanwhile: it must not be applied yet.
            Thread.Sleep(100);
            lock (snapshots) snapshots[version] = Bits(job.Snapshot().Weights);
        };

        for (long step = 0; step < 4; step++)
        {
            float[] gradient = Values(1000 + (int)step, Elements);
            foreach (var job in new[] { parallel, single })
            {
                gradient.CopyTo(job.BeginPush(0, step, 64).Span);
                job.Received(0, Elements);
                job.CompletePush(0);
            }
            await single.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
            expected[step + 1] = Bits(single.WeightsAsFloats);
            await parallel.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
        }
        await WaitUntil(() => { lock (snapshots) return snapshots.Count == 4; });

        foreach (var (version, weights) in expected) Assert.Equal(weights, snapshots[version]);
    }

    [Fact]
    public async Task A_step_completed_by_a_pusher_that_applies_waits_for_its_answer_and_then_is_applied_whole()
    {
        var job = new JobParameters("job-c", 2, new TensorLayout(), Adam, Values(7, Elements), partitionElements: Partition, appliers: 4);
        for (int rank = 0; rank < 2; rank++)
        {
            Values(20 + rank, Elements).CopyTo(job.BeginPush(rank, 0, 64).Span);
            // Rank 1's push completes the step, on a thread that applies it once it has answered.
            job.Received(rank, Elements, callerApplies: rank == 1);
            job.CompletePush(rank);
        }
        Assert.True(await job.WaitForStepCompleteAsync(0, CancellationToken.None).WaitAsync(Patience).ContinueWith(t => t.IsCompletedSuccessfully));
        // No applier was woken: nothing moves until the pusher's call, however long it takes.
        await Task.Delay(300);
        Assert.False(job.WaitForPartitionAsync(0, 1, CancellationToken.None).IsCompleted);
        Assert.Equal(0, job.Version);

        job.ApplyQueuedPartitions();
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Patience);
        // The next step's pushes, from threads that do not apply, wake the appliers themselves.
        for (int rank = 0; rank < 2; rank++)
        {
            Values(30 + rank, Elements).CopyTo(job.BeginPush(rank, 1, 64).Span);
            job.Received(rank, Elements);
            job.CompletePush(rank);
        }
        await job.WaitForVersionAsync(2, CancellationToken.None).WaitAsync(Patience);
    }

    [Fact]
    public void A_job_has_one_applier_per_core_and_never_more_than_partitions()
    {
        Assert.Equal(Math.Min(Environment.ProcessorCount, 41), new JobParameters("j", 1, new TensorLayout(), Adam, new float[Elements], partitionElements: Partition).ApplierCount);
        Assert.Equal(1, new JobParameters("j", 1, new TensorLayout(), Adam, new float[10], partitionElements: 100, appliers: 8).ApplierCount);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the snapshots");
            await Task.Delay(10);
        }
    }

    private static float[] Values(int seed, int length)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1) * 1e-2f)];
    }

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];
}
