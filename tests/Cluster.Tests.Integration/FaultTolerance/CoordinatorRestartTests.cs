using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;
using Cluster.Shared.Checkpoints;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.FaultTolerance;

/// <summary>
/// The coordinator killed with signal 9 in the middle of an epoch and started again on the
/// same ports with the same state file (SQLite): it replays its journal, the workers and the
/// watching `cluster submit --wait` ride out the outage, and the job finishes as if nothing had
/// happened: every sample trained exactly once in every epoch, and the same parameters as the
/// same job run afterwards without a fault.
/// </summary>
[Trait("Tier", "e2e")]
public sealed partial class CoordinatorRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private const int TrainSamples = 9600;
    private readonly string _directory = Directory.CreateTempSubdirectory("coordinator-restart-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Theory]
    [InlineData("ps")]
    [InlineData("allreduce")]
    public async Task A_coordinator_killed_mid_epoch_and_restarted_on_its_state_file_finishes_the_job(string scheme)
    {
        string state = Path.Combine(_directory, "coordinator.db");
        string[] coordinatorArguments = ["coordinator", "--port", JobProgress.FreePort().ToString(), "--http-port", JobProgress.FreePort().ToString(),
            "--lease-port", JobProgress.FreePort().ToString(), "--state", state];
        var coordinator = ClusterCommand.Start(coordinatorArguments);
        ClusterCommand? restarted = null;
        try
        {
            var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
            using var server = ClusterCommand.Start("ps", "--coordinator", urls["grpc"]);
            await server.WaitForLineAsync("CLUSTER-READY", Startup);
            // Slowed steps, so that the kill lands mid-epoch on any machine.
            using var worker0 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "30");
            using var worker1 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "30");
            string faulted = Path.Combine(_directory, "faulted.safetensors"), reference = Path.Combine(_directory, "reference.safetensors");
            using var submit = ClusterCommand.Start(Submit(urls["http"], faulted, scheme));

            // 150 steps an epoch: killed at 40 % of epoch 0.
            await JobProgress.WaitForStepsAsync(urls["http"], epoch: 0, steps: 60, Startup);
            using (var kill = System.Diagnostics.Process.Start("kill", ["-9", coordinator.ProcessId.ToString()])) await kill.WaitForExitAsync();
            await coordinator.WaitAsync(TimeSpan.FromSeconds(10));
            restarted = ClusterCommand.Start(coordinatorArguments);
            await restarted.WaitForLineAsync("CLUSTER-READY", Startup);

            int exitCode = await submit.WaitAsync(TimeSpan.FromSeconds(180));
            string logs = $"\nsubmit:\n{submit.Stdout}\n{submit.Stderr}\nworker 0:\n{worker0.Stdout}{worker0.Stderr}\nrestarted coordinator:\n{restarted.Stdout}{restarted.Stderr}";
            Assert.True(exitCode == 0, $"exit code {exitCode}{logs}");
            var replayed = ReplayedPattern().Match(restarted.Stdout + restarted.Stderr);
            Assert.True(replayed.Success, $"the restarted coordinator did not replay its state{logs}");
            Assert.Equal("1", replayed.Groups[2].Value);
            output.WriteLine($"restarted coordinator replayed {replayed.Groups[1].Value} events; {submit.Stderr.Split('\n').Count(l => l.Contains("not reachable", StringComparison.Ordinal))} polls found it away");

            using var job = JsonDocument.Parse(submit.Stdout);
            Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
            Assert.Equal(2, job.RootElement.GetProperty("epochs").GetArrayLength());
            // Audits and removed ranks belong to the parameter-server scheme's leases.
            if (scheme == "ps") Assert.Empty(job.RootElement.GetProperty("removedRanks").EnumerateArray());
            foreach (var audit in scheme == "ps" ? [.. job.RootElement.GetProperty("audit").EnumerateArray()] : Array.Empty<JsonElement>())
            {
                output.WriteLine(audit.ToString());
                Assert.Equal(TrainSamples, audit.GetProperty("samplesTrainedOnce").GetInt32());
                Assert.Equal(0, audit.GetProperty("samplesNotTrained").GetInt32());
                Assert.Equal(0, audit.GetProperty("samplesTrainedMoreThanOnce").GetInt32());
                Assert.True(audit.GetProperty("complete").GetBoolean());
            }

            // The same job again on the restarted coordinator, without a fault: the same model.
            var (referenceExit, referenceStdout, referenceStderr) = await ClusterCommand.RunAsync(TimeSpan.FromSeconds(180), Submit(urls["http"], reference, scheme));
            Assert.True(referenceExit == 0, $"reference job: exit code {referenceExit}\n{referenceStderr}");
            using var referenceJob = JsonDocument.Parse(referenceStdout);
            double accuracy = job.RootElement.GetProperty("epochs")[1].GetProperty("accuracy").GetDouble();
            double referenceAccuracy = referenceJob.RootElement.GetProperty("epochs")[1].GetProperty("accuracy").GetDouble();
            output.WriteLine($"accuracy with the coordinator restart {accuracy:P2}, without {referenceAccuracy:P2}");
            Assert.Equal(referenceAccuracy, accuracy);
            var expected = SafeTensors.Read(reference);
            foreach (var (name, entry) in SafeTensors.Read(faulted))
                Assert.True(MemoryMarshal.Cast<byte, float>(entry.Data).SequenceEqual(MemoryMarshal.Cast<byte, float>(expected[name].Data)), $"{name} differs from the fault-free job's");
        }
        finally
        {
            coordinator.Dispose();
            restarted?.Dispose();
        }
    }

    private static string[] Submit(string api, string saveTo, string scheme) =>
        ["submit", "--api", api, "--wait", "--output", "json", "--model", "mlp", "--workers", "2", "--epochs", "2", "--batch-size", "32",
         "--train-limit", TrainSamples.ToString(), "--test-limit", "1000", "--save-to", saveTo, "--scheme", scheme];

    [GeneratedRegex(@"replayed (\d+) recorded events; (\d+) jobs queued or running resume")]
    private static partial Regex ReplayedPattern();
}
