using System.Diagnostics;
using System.Security.Cryptography;
using Cluster.Coordinator;
using Cluster.Coordinator.Jobs;
using Cluster.Shared.Jobs;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.AllReduce;

/// <summary>A ring member killed with signal 9 mid-epoch: the others re-form the ring and finish the job.</summary>
[Trait("Tier", "e2e")]
public sealed class AllReduceFailureTests
{
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(4);

    [Fact]
    public async Task A_worker_killed_with_signal_9_mid_epoch_leaves_the_survivors_to_finish_the_job()
    {
        using var cancel = new CancellationTokenSource(JobTimeout);
        string output = Directory.CreateTempSubdirectory("allreduce-kill-").FullName;
        var options = new CoordinatorOptions { RingJoinWindow = TimeSpan.FromSeconds(3), Security = TestSecurity.Loopback };
        await using var coordinator = await CoordinatorHost.StartAsync(options, cancel.Token);
        var workers = Enumerable.Range(0, 3)
            .Select(_ => ClusterCommand.Start("worker", "--coordinator", coordinator.GrpcUrl, "--threads", "1", "--once",
                "--peer-timeout", "5", "--parameters-out", output))
            .ToList();
        try
        {
            var job = coordinator.Board.Submit(new JobSpecification
            {
                Model = "mlp", Scheme = "allreduce", Workers = 3, Epochs = 2, BatchSize = 32, TrainLimit = 9600, TestLimit = 1000, Device = "cpu",
            });
            int victimPid = await WaitForStepAsync(coordinator.Board, job.Id, rank: 1, steps: 15, cancel.Token);

            using (var kill = Process.Start("kill", ["-9", victimPid.ToString()])) await kill.WaitForExitAsync(cancel.Token);

            var survivors = workers.Where(w => w.ProcessId != victimPid).ToList();
            Assert.Equal(2, survivors.Count);
            foreach (var worker in survivors)
                Assert.True(await worker.WaitAsync(JobTimeout) == 0, $"survivor failed:\n{worker.Stdout}\n{worker.Stderr}");
            var (state, error, results, dropped) = coordinator.Board.Read((jobs, _) =>
                (jobs[job.Id].State, jobs[job.Id].Error, jobs[job.Id].Results.ToList(), jobs[job.Id].Ring!.DroppedRanks));
            Assert.True(state == JobState.Succeeded, $"job {state}: {error}");
            Assert.Equal([1], dropped);
            Assert.Equal(2, results.Count);
            Assert.InRange(results[^1].Accuracy, 0.7, 1.0);
            var hashes = new[] { 0, 2 }.Select(rank => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(output, $"{job.Id}.rank{rank}.f32"))))).ToList();
            Assert.Equal(hashes[0], hashes[1]);
            Assert.Contains(survivors, w => w.Stdout.Contains("ring generation 2", StringComparison.Ordinal));
        }
        finally
        {
            foreach (var worker in workers) worker.Dispose();
            Directory.Delete(output, recursive: true);
        }
    }

    /// <summary>Waits until the job has trained <paramref name="steps"/> steps; returns the pid of the worker of <paramref name="rank"/>.</summary>
    private static async Task<int> WaitForStepAsync(JobBoard board, string jobId, int rank, int steps, CancellationToken cancellationToken)
    {
        while (true)
        {
            var (done, pid) = board.Read((jobs, members) =>
            {
                var job = jobs[jobId];
                int stepsDone = job.Live(DateTimeOffset.UtcNow)?.StepsDone ?? 0;
                int processId = job.Ranks.Count > rank ? members.Workers.First(w => w.Id == job.Ranks[rank]).ProcessId : 0;
                return (stepsDone, processId);
            });
            if (done >= steps && pid != 0) return pid;
            await Task.Delay(50, cancellationToken);
        }
    }
}
