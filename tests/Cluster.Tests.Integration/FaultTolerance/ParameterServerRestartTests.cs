using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit.Abstractions;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.FaultTolerance;

/// <summary>
/// A parameter server killed with signal 9 in the middle of an epoch and started again on the
/// same address with the same checkpoint folder: it loads its newest checkpoint, the workers
/// resynchronise with that version and replay the lost steps on the same batches, and the job
/// finishes. Fewer steps are lost than the checkpoint interval. In the second case the last
/// checkpoint lies in the epoch before the kill, so the workers go back into that epoch. Both
/// with shard leases (the default: the coordinator takes back the lost steps' shards, and the
/// audit still shows every sample trained exactly once per epoch) and with --static-plan.
/// </summary>
[Trait("Tier", "e2e")]
public sealed partial class ParameterServerRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private readonly string _checkpoints = Directory.CreateTempSubdirectory("ps-restart-").FullName;

    public void Dispose() => Directory.Delete(_checkpoints, recursive: true);

    [Theory]
    // One epoch of 150 steps, a checkpoint every 10, killed after step 40.
    [InlineData(1, 9600, 10, 0, 40, false)]
    [InlineData(1, 9600, 10, 0, 40, true)]
    // Two epochs of 75 steps, a checkpoint every 60 (step 60 is in epoch 0, step 120 would be step 45 of
    // epoch 1), killed early in epoch 1: the workers go back into epoch 0.
    [InlineData(2, 4800, 60, 1, 5, false)]
    [InlineData(2, 4800, 60, 1, 5, true)]
    public async Task A_parameter_server_killed_mid_epoch_resumes_from_its_checkpoint_and_the_job_finishes(
        int epochs, int trainLimit, int checkpointSteps, int killEpoch, int killAfterSteps, bool staticPlan)
    {
        using var coordinator = ClusterCommand.Start("coordinator");
        var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        string[] serverArguments = ["--coordinator", urls["grpc"], "--checkpoint-dir", _checkpoints, "--checkpoint-steps", checkpointSteps.ToString()];
        var server = ClusterCommand.Start(["ps", .. serverArguments]);
        ClusterCommand? restarted = null;
        try
        {
            string serverUrl = Cli.Local.LocalCluster.ParseUrls(await server.WaitForLineAsync("CLUSTER-READY", Startup))["grpc"];
            string port = new Uri(serverUrl).Port.ToString();
            // Slowed steps, so that the kill lands mid-epoch on any machine.
            using var worker0 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "40");
            using var worker1 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "40");
            using var submit = ClusterCommand.Start(["submit", "--api", urls["http"], "--wait", "--output", "json",
                "--model", "mlp", "--workers", "2", "--epochs", epochs.ToString(), "--batch-size", "32", "--train-limit", trainLimit.ToString(), "--test-limit", "1000",
                .. (staticPlan ? (string[])["--static-plan"] : [])]);

            await JobProgress.WaitForStepsAsync(urls["http"], killEpoch, killAfterSteps, Startup);
            using (var kill = System.Diagnostics.Process.Start("kill", ["-9", server.ProcessId.ToString()])) await kill.WaitForExitAsync();
            await server.WaitAsync(TimeSpan.FromSeconds(10));
            restarted = ClusterCommand.Start(["ps", "--port", port, .. serverArguments]);
            await restarted.WaitForLineAsync("CLUSTER-READY", Startup);

            int exitCode = await submit.WaitAsync(TimeSpan.FromSeconds(120));
            Assert.True(exitCode == 0, $"exit code {exitCode}\n{submit.Stdout}\n{submit.Stderr}\nworker 0:\n{worker0.Stdout}\nserver:\n{restarted.Stdout}{restarted.Stderr}");
            using var job = JsonDocument.Parse(submit.Stdout);
            Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
            Assert.Equal(epochs, job.RootElement.GetProperty("epochs").GetArrayLength());
            Assert.InRange(job.RootElement.GetProperty("epochs")[epochs - 1].GetProperty("accuracy").GetDouble(), 0.7, 1.0);
            if (!staticPlan)
            {
                // The lost steps' shards were taken back and trained again: still every sample exactly once per epoch.
                foreach (var audit in job.RootElement.GetProperty("audit").EnumerateArray())
                {
                    output.WriteLine(audit.ToString());
                    Assert.Equal((trainLimit, 0, 0), (audit.GetProperty("samplesTrainedOnce").GetInt32(),
                        audit.GetProperty("samplesNotTrained").GetInt32(), audit.GetProperty("samplesTrainedMoreThanOnce").GetInt32()));
                }
            }

            // The restarted server loaded a checkpoint of the schedule's version...
            var loaded = LoadedPattern().Match(restarted.Stdout + restarted.Stderr);
            Assert.True(loaded.Success, $"the restarted server loaded no checkpoint:\n{restarted.Stdout}\n{restarted.Stderr}");
            long version = long.Parse(loaded.Groups[1].Value);
            Assert.True(version > 0 && version % checkpointSteps == 0, $"loaded version {version}");
            long killEpochFirstStep = killEpoch * (trainLimit / 64L);
            Assert.True(killEpoch == 0 || version < killEpochFirstStep, $"loaded version {version}; expected one of the epoch before step {killEpochFirstStep}");
            // ...and each worker lost fewer steps than the checkpoint interval.
            foreach (var worker in new[] { worker0, worker1 })
            {
                var resumed = ResumedPattern().Match(worker.Stdout + worker.Stderr);
                Assert.True(resumed.Success, $"a worker did not resume:\n{worker.Stdout}\n{worker.Stderr}");
                Assert.Equal(version, long.Parse(resumed.Groups[2].Value));
                long lost = long.Parse(resumed.Groups[3].Value);
                output.WriteLine($"worker at step {resumed.Groups[1].Value} resumed from checkpoint version {version}: {lost} steps lost (interval {checkpointSteps})");
                Assert.InRange(lost, 0, checkpointSteps);
            }
        }
        finally
        {
            server.Dispose();
            restarted?.Dispose();
        }
    }

    /// <summary>
    /// A worker killed with signal 9 and removed from the job (heartbeat timeout), then the
    /// parameter server killed and restarted from a checkpoint written after the removal: the
    /// restored barrier does not wait for the lost rank, the survivors train the lost steps again,
    /// and every sample is trained exactly once.
    /// </summary>
    [Fact]
    public async Task A_parameter_server_restarted_after_a_worker_was_lost_resumes_without_it()
    {
        const int trainLimit = 9600; // 100 steps of 3 x 32
        using var coordinator = ClusterCommand.Start("coordinator", "--heartbeat-timeout", "3");
        var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        string[] serverArguments = ["--coordinator", urls["grpc"], "--checkpoint-dir", _checkpoints, "--checkpoint-steps", "10"];
        var server = ClusterCommand.Start(["ps", .. serverArguments]);
        ClusterCommand? restarted = null;
        List<ClusterCommand> workers = [];
        try
        {
            string port = new Uri(Cli.Local.LocalCluster.ParseUrls(await server.WaitForLineAsync("CLUSTER-READY", Startup))["grpc"]).Port.ToString();
            workers.AddRange(Enumerable.Range(0, 3).Select(_ => ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "60")));
            using var submit = ClusterCommand.Start("submit", "--api", urls["http"], "--wait", "--output", "json",
                "--model", "mlp", "--workers", "3", "--epochs", "1", "--batch-size", "32", "--train-limit", trainLimit.ToString(), "--test-limit", "1000");

            await JobProgress.WaitForStepsAsync(urls["http"], epoch: 0, steps: 10, Startup);
            using (var kill = System.Diagnostics.Process.Start("kill", ["-9", workers[2].ProcessId.ToString()])) await kill.WaitForExitAsync();
            // The removal, then a checkpoint written after it (one every 10 steps), then the server's kill.
            int removedAt = await JobProgress.WaitForRemovedRankAsync(urls["http"], Startup);
            await JobProgress.WaitForStepsAsync(urls["http"], epoch: 0, steps: removedAt + 15, Startup);
            output.WriteLine($"rank removed at step {removedAt}");
            using (var kill = System.Diagnostics.Process.Start("kill", ["-9", server.ProcessId.ToString()])) await kill.WaitForExitAsync();
            await server.WaitAsync(TimeSpan.FromSeconds(10));
            restarted = ClusterCommand.Start(["ps", "--port", port, .. serverArguments]);
            await restarted.WaitForLineAsync("CLUSTER-READY", Startup);

            int exitCode = await submit.WaitAsync(TimeSpan.FromSeconds(180));
            Assert.True(exitCode == 0, $"exit code {exitCode}\n{submit.Stdout}\n{submit.Stderr}\nworker 0:\n{workers[0].Stdout}\nserver:\n{restarted.Stdout}{restarted.Stderr}");
            using var job = JsonDocument.Parse(submit.Stdout);
            Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
            Assert.Single(job.RootElement.GetProperty("removedRanks").EnumerateArray());
            var loaded = LoadedPattern().Match(restarted.Stdout + restarted.Stderr);
            Assert.True(loaded.Success, $"the restarted server loaded no checkpoint:\n{restarted.Stdout}\n{restarted.Stderr}");
            output.WriteLine($"restarted from version {loaded.Groups[1].Value}");
            var audit = Assert.Single(job.RootElement.GetProperty("audit").EnumerateArray());
            output.WriteLine(audit.ToString());
            Assert.Equal((trainLimit, 0, 0), (audit.GetProperty("samplesTrainedOnce").GetInt32(),
                audit.GetProperty("samplesNotTrained").GetInt32(), audit.GetProperty("samplesTrainedMoreThanOnce").GetInt32()));
            Assert.InRange(job.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble(), 0.7, 1.0);
        }
        finally
        {
            foreach (var worker in workers) worker.Dispose();
            server.Dispose();
            restarted?.Dispose();
        }
    }

    [GeneratedRegex(@"Loaded job \S+ at version (\d+) from checkpoint")]
    private static partial Regex LoadedPattern();

    [GeneratedRegex(@"was at step (\d+); the parameter servers hold version (\d+); resuming there, steps lost: (\d+)")]
    private static partial Regex ResumedPattern();
}
