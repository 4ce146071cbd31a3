using System.Diagnostics;
using Cluster.Coordinator;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Leases;
using Cluster.ParameterServer;
using Cluster.Shared.Jobs;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.FaultTolerance;

/// <summary>
/// Shard leases with real processes on loopback: the coordinator and a parameter server in
/// this process, workers as `cluster worker` processes. A worker killed with signal 9 loses
/// no sample (the audit counts each one trained exactly once); a worker started while a job
/// runs joins it and trains.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class WorkerFaultTests(ITestOutputHelper output)
{
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(4);
    private const int FashionMnistTrainSamples = 60_000;

    /// <summary>
    /// Test accuracy after epoch 1 of this job without any fault: 87.71 % (measured on this
    /// project's 2-core machines; the fault-free run is deterministic: rank-ordered aggregation,
    /// one libtorch thread per worker). Recorded rather than re-run beside the faulted job,
    /// which would double this test's time (about 2 x 75 s on an idle 2-core machine).
    /// </summary>
    private const double FaultFreeAccuracy = 0.8771;

    /// <summary>Shards per rank of a fault-free epoch: 60,000 samples in global batches of 3 x 64, 313 steps.</summary>
    private const int FaultFreeShardsPerRank = 313;

    [Fact]
    public async Task A_worker_killed_with_signal_9_at_40_percent_loses_no_sample_and_costs_under_a_point_of_accuracy()
    {
        var spec = new JobSpecification { Model = "cnn", Workers = 3, Epochs = 1, BatchSize = 64, Seed = 5, Device = "cpu" };

        var clock = Stopwatch.StartNew();
        var faulted = await RunAsync(spec, killAtFraction: 0.4);
        var audit = Assert.Single(faulted.Audit);
        output.WriteLine($"rank 1 killed: {clock.Elapsed.TotalSeconds:0} s, accuracy {faulted.Accuracy:P2}, shards by rank {string.Join(" ", audit.ShardsByRank)}, returned {audit.ShardsReturned}");

        Assert.Equal(FashionMnistTrainSamples, audit.Samples);
        Assert.Equal((FashionMnistTrainSamples, 0, 0, true), (audit.SamplesTrainedOnce, audit.SamplesNotTrained, audit.SamplesTrainedMoreThanOnce, audit.Complete));
        Assert.Equal([1], faulted.Removed);
        // The killed rank trained part of the epoch; the survivors the rest, its unfinished shards included.
        Assert.InRange(audit.ShardsByRank.GetValueOrDefault(1), 1, FaultFreeShardsPerRank - 1);
        Assert.Equal(3 * FaultFreeShardsPerRank, audit.ShardsByRank.Values.Sum());
        Assert.True(Math.Abs(faulted.Accuracy - FaultFreeAccuracy) <= 0.01,
            $"accuracy {faulted.Accuracy:P2} with the fault, {FaultFreeAccuracy:P2} without; expected within 1 point");
    }

    [Fact]
    public async Task The_fault_free_job_trains_each_sample_once_with_the_recorded_accuracy()
    {
        var spec = new JobSpecification { Model = "cnn", Workers = 3, Epochs = 1, BatchSize = 64, Seed = 5, Device = "cpu" };

        var baseline = await RunAsync(spec, killAtFraction: null);

        var audit = Assert.Single(baseline.Audit);
        Assert.Equal((FashionMnistTrainSamples, 0, 0, true), (audit.SamplesTrainedOnce, audit.ShardsReturned, audit.SamplesTrainedMoreThanOnce, audit.Complete));
        Assert.All(audit.ShardsByRank.Values, shards => Assert.Equal(FaultFreeShardsPerRank, shards));
        Assert.Empty(baseline.Removed);
        Assert.True(Math.Abs(baseline.Accuracy - FaultFreeAccuracy) <= 0.005, $"accuracy {baseline.Accuracy:P2}; recorded {FaultFreeAccuracy:P2}");
    }

    [Fact]
    public async Task A_worker_started_while_a_job_runs_joins_it_and_trains()
    {
        var spec = new JobSpecification
        {
            Model = "mlp", Workers = 2, MaxWorkers = 3, Epochs = 2, BatchSize = 32, TrainLimit = 12_000, TestLimit = 1_000, Seed = 3, Device = "cpu",
        };
        using var cancel = new CancellationTokenSource(JobTimeout);
        await using var coordinator = await CoordinatorHost.StartAsync(Options(), cancel.Token);
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { CoordinatorUrl = coordinator.GrpcUrl, Security = TestSecurity.Loopback }, cancel.Token);
        // The first two ranks are slowed (20 ms a step, about 4 s an epoch), so that the job is still
        // running when the third worker, started at 20 % of epoch 0, has loaded and registered on a busy machine.
        var workers = Enumerable.Range(0, 2).Select(_ => StartWorker(coordinator, "--slow-step-ms", "20")).ToList();
        try
        {
            var job = coordinator.Board.Submit(spec);
            await WaitForAcknowledgedAsync(coordinator.Board, job.Id, fraction: 0.2, cancel.Token);
            workers.Add(StartWorker(coordinator));

            foreach (var worker in workers) Assert.True(await worker.WaitAsync(JobTimeout) == 0, $"worker failed:\n{worker.Stdout}\n{worker.Stderr}");
            var (state, error, ranks, audits) = coordinator.Board.Read((jobs, _) =>
                (jobs[job.Id].State, jobs[job.Id].Error, jobs[job.Id].Ranks.Count, jobs[job.Id].Leases!.Audits().ToList()));
            Assert.True(state == JobState.Succeeded, $"job {state}: {error}\n" + string.Join("\n", workers.Select(w => w.Stdout + w.Stderr)));
            Assert.Equal(3, ranks);
            Assert.Equal(2, audits.Count);
            Assert.All(audits, audit => Assert.Equal((12_000, 0, true), (audit.SamplesTrainedOnce, audit.SamplesTrainedMoreThanOnce, audit.Complete)));
            // The joiner trained shards in every epoch from the one it joined in (epoch 0, or epoch 1 when it
            // took longer to start than epoch 0 to train).
            int joinedIn = audits.FindIndex(audit => audit.ShardsByRank.GetValueOrDefault(2) > 0);
            Assert.True(joinedIn >= 0, "rank 2 trained no shard");
            Assert.All(audits.Skip(joinedIn), audit => Assert.True(audit.ShardsByRank.GetValueOrDefault(2) > 0, $"epoch {audit.Epoch}: rank 2 trained no shard"));
        }
        finally
        {
            foreach (var worker in workers) worker.Dispose();
        }
    }

    private sealed record RunResult(IReadOnlyList<EpochAudit> Audit, IReadOnlyList<int> Removed, double Accuracy);

    private static async Task<RunResult> RunAsync(JobSpecification spec, double? killAtFraction)
    {
        using var cancel = new CancellationTokenSource(JobTimeout);
        await using var coordinator = await CoordinatorHost.StartAsync(Options(), cancel.Token);
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { CoordinatorUrl = coordinator.GrpcUrl, Security = TestSecurity.Loopback }, cancel.Token);
        var workers = Enumerable.Range(0, spec.Workers).Select(_ => StartWorker(coordinator)).ToList();
        try
        {
            var job = coordinator.Board.Submit(spec);
            int? victimPid = null;
            if (killAtFraction is { } fraction)
            {
                await WaitForAcknowledgedAsync(coordinator.Board, job.Id, fraction, cancel.Token);
                victimPid = coordinator.Board.Read((jobs, members) => members.Workers.First(w => w.Id == jobs[job.Id].Ranks[1]).ProcessId);
                using var kill = Process.Start("kill", ["-9", victimPid.Value.ToString()]);
                await kill.WaitForExitAsync(cancel.Token);
            }
            foreach (var worker in workers.Where(w => w.ProcessId != victimPid))
                Assert.True(await worker.WaitAsync(JobTimeout) == 0, $"worker failed:\n{worker.Stdout}\n{worker.Stderr}");
            return coordinator.Board.Read((jobs, _) =>
            {
                var record = jobs[job.Id];
                Assert.True(record.State == JobState.Succeeded, $"job {record.State}: {record.Error}");
                return new RunResult([.. record.Leases!.Audits()], [.. record.RemovedRanks.Order()], record.Results[^1].Accuracy);
            });
        }
        finally
        {
            foreach (var worker in workers) worker.Dispose();
        }
    }

    /// <summary>Heartbeats every 0.5 s, a worker is dead after 3 s of silence.</summary>
    private static CoordinatorOptions Options() => new()
    {
        Security = TestSecurity.Loopback, HeartbeatInterval = TimeSpan.FromMilliseconds(500), HeartbeatTimeout = TimeSpan.FromSeconds(3),
    };

    private static ClusterCommand StartWorker(CoordinatorHost coordinator, params string[] options) =>
        ClusterCommand.Start(["worker", "--coordinator", coordinator.GrpcUrl, "--threads", "1", "--once", .. options]);

    /// <summary>Waits until the given fraction of epoch 0's shards is acknowledged (trained and applied).</summary>
    private static async Task WaitForAcknowledgedAsync(JobBoard board, string jobId, double fraction, CancellationToken cancellationToken)
    {
        while (true)
        {
            bool reached = board.Read((jobs, _) =>
                jobs[jobId].Leases?.Audits() is [var audit, ..] && audit.ShardsAcknowledged >= fraction * audit.Shards);
            if (reached) return;
            await Task.Delay(50, cancellationToken);
        }
    }
}
