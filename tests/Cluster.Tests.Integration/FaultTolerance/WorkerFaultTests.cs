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

    [Fact]
    public async Task A_worker_killed_with_signal_9_at_40_percent_loses_no_sample_and_costs_under_a_point_of_accuracy()
    {
        var spec = new JobSpecification { Model = "cnn", Workers = 3, Epochs = 1, BatchSize = 64, Seed = 5, Device = "cpu" };

        var clock = Stopwatch.StartNew();
        var baseline = await RunAsync(spec, killAtFraction: null);
        output.WriteLine($"baseline: {clock.Elapsed.TotalSeconds:0} s, accuracy {baseline.Accuracy:P2}, shards by rank {string.Join(" ", baseline.Audit[0].ShardsByRank)}");
        clock.Restart();
        var faulted = await RunAsync(spec, killAtFraction: 0.4);
        output.WriteLine($"rank 1 killed: {clock.Elapsed.TotalSeconds:0} s, accuracy {faulted.Accuracy:P2}, shards by rank {string.Join(" ", faulted.Audit[0].ShardsByRank)}, returned {faulted.Audit[0].ShardsReturned}");

        foreach (var run in new[] { baseline, faulted })
        {
            var audit = Assert.Single(run.Audit);
            Assert.Equal(FashionMnistTrainSamples, audit.Samples);
            Assert.Equal((FashionMnistTrainSamples, 0, 0, true), (audit.SamplesTrainedOnce, audit.SamplesNotTrained, audit.SamplesTrainedMoreThanOnce, audit.Complete));
        }
        Assert.Empty(baseline.Removed);
        Assert.Equal([1], faulted.Removed);
        // The killed rank trained part of the epoch, the survivors the rest, its unfinished shards included.
        var byRank = faulted.Audit[0].ShardsByRank;
        Assert.InRange(byRank.GetValueOrDefault(1), 1, baseline.Audit[0].ShardsByRank[1] - 1);
        Assert.True(byRank[0] + byRank[2] > baseline.Audit[0].ShardsByRank[0] + baseline.Audit[0].ShardsByRank[2]);
        Assert.InRange(baseline.Accuracy, 0.80, 1.0);
        Assert.True(Math.Abs(faulted.Accuracy - baseline.Accuracy) <= 0.01,
            $"accuracy {faulted.Accuracy:P2} with the fault, {baseline.Accuracy:P2} without; expected within 1 point");
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
        var workers = Enumerable.Range(0, 2).Select(_ => StartWorker(coordinator)).ToList();
        try
        {
            var job = coordinator.Board.Submit(spec);
            await WaitForAcknowledgedAsync(coordinator.Board, job.Id, fraction: 0.2, cancel.Token);
            workers.Add(StartWorker(coordinator));

            foreach (var worker in workers) Assert.True(await worker.WaitAsync(JobTimeout) == 0, $"worker failed:\n{worker.Stdout}\n{worker.Stderr}");
            var (state, error, ranks, audits) = coordinator.Board.Read((jobs, _) =>
                (jobs[job.Id].State, jobs[job.Id].Error, jobs[job.Id].Ranks.Count, jobs[job.Id].Leases!.Audits().ToList()));
            Assert.True(state == JobState.Succeeded, $"job {state}: {error}");
            Assert.Equal(3, ranks);
            Assert.Equal(2, audits.Count);
            Assert.All(audits, audit => Assert.Equal((12_000, 0, true), (audit.SamplesTrainedOnce, audit.SamplesTrainedMoreThanOnce, audit.Complete)));
            // The joiner trained shards in both epochs (the second entirely with three ranks).
            Assert.All(audits, audit => Assert.True(audit.ShardsByRank.GetValueOrDefault(2) > 0, $"epoch {audit.Epoch}: rank 2 trained no shard"));
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

    private static ClusterCommand StartWorker(CoordinatorHost coordinator) =>
        ClusterCommand.Start("worker", "--coordinator", coordinator.GrpcUrl, "--threads", "1", "--once");

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
