using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Simulation;

/// <summary>
/// A deterministic simulation of a parameter server's BSP aggregation under a seeded fault
/// schedule: pushes of the ranks delivered in random order, cut off after some partitions and
/// retried, repeated whole (a lost reply) and repeated late (after the step was applied), and
/// server crashes: the server comes back from its last checkpoint (written and read back through
/// the checkpoint files) and every rank replays the steps since. One
/// seed drives the whole scenario (sizes, optimizer, gradients, schedule); the schedule depends on
/// nothing else, so a failing seed, printed in the message, replays exactly. Invariants: the
/// result equals the same job fed in order without faults, bit for bit (so no update was applied
/// twice or lost), and every repeat was acknowledged as a duplicate.
/// </summary>
[Trait("Tier", "unit")]
[Trait("Tier", "simulation")]
public sealed class AggregationSimulationTests
{
    private const int Seeds = 1_000;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_thousand_seeded_fault_schedules_give_the_in_order_result_and_apply_nothing_twice()
    {
        var faults = new Dictionary<string, int> { ["crash"] = 0, ["cut"] = 0, ["late"] = 0, ["repeat"] = 0 };
        for (int seed = 0; seed < Seeds; seed++)
        {
            try
            {
                var outcome = await RunAsync(seed);
                foreach (string fault in faults.Keys) faults[fault] += outcome.Trace.Count(t => t.Contains(fault, StringComparison.Ordinal));
            }
            catch (Exception e)
            {
                Assert.Fail($"seed {seed}: {e.Message}\nreplay it with Replays_one_seed({seed})\n{e}");
            }
        }
        // Every kind of fault happened often, so the invariants were checked against each.
        Assert.All(faults, f => Assert.True(f.Value >= 100, $"{f.Key}: {f.Value} times in {Seeds} seeds"));
    }

    /// <summary>Runs one seed twice: the schedule (the trace of deliveries) is the same, and so is the result.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(417)]
    public async Task Replays_one_seed(int seed)
    {
        var first = await RunAsync(seed);
        var second = await RunAsync(seed);
        Assert.Equal(first.Trace, second.Trace);
        Assert.Equal(first.Weights, second.Weights);
    }

    private sealed record Scenario(int WorldSize, int Elements, int PartitionElements, int Steps, OptimizerSettings Optimizer, float[] Initial, float[][][] Gradients, int[][] Samples);

    private sealed record Outcome(List<string> Trace, int[] Weights);

    private static Scenario Generate(Random random)
    {
        int worldSize = random.Next(1, 5), elements = random.Next(1, 40), steps = random.Next(1, 6);
        var optimizer = random.Next(3) switch
        {
            0 => new OptimizerSettings { Kind = "sgd", LearningRate = 0.5 },
            1 => new OptimizerSettings { Kind = "sgd", LearningRate = 0.1, Momentum = 0.9 },
            _ => new OptimizerSettings { Kind = "adam", LearningRate = 0.01 },
        };
        float[] Vector() => [.. Enumerable.Range(0, elements).Select(_ => (float)(random.NextDouble() * 2 - 1))];
        var gradients = Enumerable.Range(0, steps).Select(_ => Enumerable.Range(0, worldSize).Select(_ => Vector()).ToArray()).ToArray();
        var samples = Enumerable.Range(0, steps).Select(_ => Enumerable.Range(0, worldSize).Select(_ => random.Next(0, 5)).ToArray()).ToArray();
        return new Scenario(worldSize, elements, random.Next(1, elements + 1), steps, optimizer, Vector(), gradients, samples);
    }

    private static JobParameters NewJob(Scenario s) =>
        new("job-sim", s.WorldSize, Layout(s), s.Optimizer, [.. s.Initial], partitionElements: s.PartitionElements);

    private static TensorLayout Layout(Scenario s) => new() { Tensors = { new TensorSpec { Name = "w", Dtype = DType.Float32, Shape = { s.Elements } } } };

    /// <summary>The server crashes and restarts from the checkpoint files of <paramref name="checkpoint"/>.</summary>
    private static JobParameters Restart(JobParameters crashed, JobSnapshot checkpoint)
    {
        crashed.Close();
        string directory = Directory.CreateTempSubdirectory("sim-checkpoint-").FullName;
        try
        {
            return JobParameters.Restore(Cluster.ParameterServer.Checkpoints.CheckpointFile.Read(
                Cluster.ParameterServer.Checkpoints.CheckpointFile.Write(directory, checkpoint)));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static async Task<Outcome> RunAsync(int seed)
    {
        var random = new Random(seed);
        var scenario = Generate(random);
        var reference = NewJob(scenario);
        for (int step = 0; step < scenario.Steps; step++)
        {
            for (int rank = 0; rank < scenario.WorldSize; rank++)
                // The reply carries the version at that moment: step, or step + 1 when the last push's partitions were applied first.
                Assert.InRange(Deliver(reference, rank, step, scenario, partitions: int.MaxValue, complete: true) ?? step, step, step + 1);
            await reference.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
        }

        var job = NewJob(scenario);
        var checkpoint = job.Snapshot();
        int checkpointEvery = random.Next(1, 4), crashesLeft = random.Next(0, 3);
        var trace = new List<string>();
        long duplicates = 0;
        for (int step = 0; step < scenario.Steps; step++)
        {
            if (crashesLeft > 0 && random.Next(4) == 0)
            {
                // Crash in the middle of the step: some ranks have pushed, then the server restarts
                // from its checkpoint and every rank goes back to the checkpoint's version.
                foreach (int rank in Enumerable.Range(0, scenario.WorldSize).Where(_ => random.Next(2) == 0))
                    Deliver(job, rank, step, scenario, int.MaxValue, complete: true);
                crashesLeft--;
                job = Restart(job, checkpoint);
                duplicates = job.DuplicatePushes;
                trace.Add($"s{step} crash, back to v{checkpoint.Version}");
                step = (int)checkpoint.Version - 1;
                continue;
            }
            // Every rank's push of this step, in a random order, each possibly cut off and retried,
            // repeated whole, and interleaved with late repeats of earlier steps.
            var pending = Enumerable.Range(0, scenario.WorldSize).ToList();
            while (pending.Count > 0)
            {
                int rank = pending[random.Next(pending.Count)];
                switch (random.Next(5))
                {
                    case 0 when job.PartitionCount > 1:
                        int cut = random.Next(1, job.PartitionCount);
                        trace.Add($"s{step} r{rank} cut after {cut}");
                        Deliver(job, rank, step, scenario, cut, complete: false);
                        break;
                    case 1 when step > 0:
                        int late = random.Next(step);
                        trace.Add($"s{step} r{rank} late repeat of s{late}");
                        Assert.Equal(step, Deliver(job, rank, late, scenario, int.MaxValue, complete: true));
                        duplicates++;
                        break;
                    default:
                        trace.Add($"s{step} r{rank} whole");
                        Deliver(job, rank, step, scenario, int.MaxValue, complete: true);
                        pending.Remove(rank);
                        if (random.Next(3) == 0)
                        {
                            trace.Add($"s{step} r{rank} repeat");
                            Deliver(job, rank, step, scenario, int.MaxValue, complete: true);
                            duplicates++;
                        }
                        break;
                }
            }
            await job.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
            // Between steps nothing is in flight: the snapshot is consistent.
            if ((step + 1) % checkpointEvery == 0) checkpoint = job.Snapshot();
        }

        Assert.Equal(scenario.Steps, job.Version);
        Assert.Equal(duplicates, job.DuplicatePushes);
        int[] weights = Bits(job.WeightsAsFloats);
        Assert.True(Bits(reference.WeightsAsFloats).SequenceEqual(weights), $"weights differ from the in-order run after {string.Join("; ", trace)}");
        reference.Close();
        job.Close();
        return new Outcome(trace, weights);
    }

    /// <summary>
    /// Sends rank's gradient of <paramref name="step"/>, stopping after <paramref name="partitions"/>
    /// partitions; completes the push (returns the version) or aborts it (a broken stream, null).
    /// </summary>
    private static long? Deliver(JobParameters job, int rank, long step, Scenario s, int partitions, bool complete)
    {
        var buffer = job.BeginPush(rank, step, s.Samples[step][rank]);
        s.Gradients[step][rank].CopyTo(buffer.Span);
        int elements = (int)Math.Min(s.Elements, (long)partitions * s.PartitionElements);
        // Delivered in two chunks, as a stream would, the second ending at the cut.
        job.Received(rank, elements / 2);
        job.Received(rank, elements);
        if (complete) return job.CompletePush(rank);
        job.AbortPush(rank);
        return null;
    }

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];
}
