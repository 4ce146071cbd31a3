using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>
/// The roles started one by one with their own commands, as on several machines, and a job
/// submitted to them with `cluster submit`; and what a user sees when a worker dies.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class SpreadClusterTests
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(4);

    [Fact]
    public async Task Roles_started_separately_train_a_submitted_job_and_status_reports_it()
    {
        using var coordinator = ClusterCommand.Start("coordinator");
        var urls = Urls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        using var server = ClusterCommand.Start("ps", "--coordinator", urls["grpc"]);
        await server.WaitForLineAsync("CLUSTER-READY", Startup);
        using var worker0 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1");
        using var worker1 = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1");

        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(JobTimeout,
            "submit", "--api", urls["http"], "--wait", "--output", "json",
            "--model", "mlp", "--workers", "2", "--epochs", "2", "--train-limit", "4000", "--test-limit", "1000");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var job = JsonDocument.Parse(stdout);
        Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
        var epochs = job.RootElement.GetProperty("epochs").EnumerateArray().Select(e => e.GetProperty("accuracy").GetDouble()).ToList();
        Assert.Equal(2, epochs.Count);
        Assert.InRange(epochs[^1], 0.7, 1.0);

        var (statusExit, statusOut, _) = await ClusterCommand.RunAsync(TimeSpan.FromSeconds(60), "status", "--api", urls["http"], "--output", "json");
        Assert.Equal(0, statusExit);
        Assert.Contains("\"state\": \"succeeded\"", statusOut, StringComparison.Ordinal);

        // Both workers are idle again and still registered.
        using var http = TestSecurity.HttpClient();
        var cluster = await http.GetFromJsonAsync<JsonElement>($"{urls["http"]}/api/cluster");
        Assert.Equal(["idle", "idle"], cluster.GetProperty("workers").EnumerateArray().Select(w => w.GetProperty("state").GetString()));
    }

    [Fact]
    public async Task A_worker_killed_with_signal_9_fails_the_local_run_promptly_naming_the_worker()
    {
        using var local = ClusterCommand.Start("local", "--model", "cnn", "--workers", "2", "--epochs", "1", "--test-limit", "500");
        string api = await WaitForApiAsync(local);
        using var http = TestSecurity.HttpClient();
        int workerPid = 0;
        var giveUpAt = DateTime.UtcNow + Startup;
        while (workerPid == 0 && DateTime.UtcNow < giveUpAt)
        {
            var jobs = await http.GetFromJsonAsync<JsonElement>($"{api}/api/jobs");
            bool training = jobs.EnumerateArray().Any(j => j.TryGetProperty("progress", out var p) && p.ValueKind == JsonValueKind.Object && p.GetProperty("stepsDone").GetInt32() > 5);
            if (training)
            {
                var cluster = await http.GetFromJsonAsync<JsonElement>($"{api}/api/cluster");
                workerPid = cluster.GetProperty("workers").EnumerateArray().First().GetProperty("processId").GetInt32();
            }
            else await Task.Delay(200);
        }
        Assert.NotEqual(0, workerPid);

        using (var kill = System.Diagnostics.Process.Start("kill", ["-9", workerPid.ToString()])) await kill.WaitForExitAsync();
        var killedAt = DateTime.UtcNow;
        int exitCode = await local.WaitAsync(TimeSpan.FromSeconds(60));

        Assert.NotEqual(0, exitCode);
        Assert.True(DateTime.UtcNow - killedAt < TimeSpan.FromSeconds(30), "the run did not notice the dead worker quickly");
        Assert.Contains($"(pid {workerPid}) exited with code 137", local.Stderr, StringComparison.Ordinal);
        await Task.Delay(1000);
        Assert.Empty(ProcessTable.WithCommandLineContaining($"--parent-pid {local.ProcessId}"));
    }

    [Fact]
    public async Task A_parameter_server_that_cannot_be_reached_fails_the_job_with_its_address()
    {
        const string deadServer = "http://127.0.0.1:9";
        await using var coordinator = await Coordinator.CoordinatorHost.StartAsync(new Coordinator.CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        coordinator.Board.RegisterServer(deadServer);
        using var worker = ClusterCommand.Start("worker", "--coordinator", coordinator.GrpcUrl, "--once", "--connect-timeout", "2");

        var job = coordinator.Board.Submit(new Shared.Jobs.JobSpecification { Model = "mlp", Workers = 1, Epochs = 1, TrainLimit = 640, TestLimit = 100 });
        Assert.Equal(0, await worker.WaitAsync(TimeSpan.FromSeconds(60)));

        var (state, error) = coordinator.Board.Read((jobs, _) => (jobs[job.Id].State, jobs[job.Id].Error));
        Assert.Equal(Coordinator.Jobs.JobState.Failed, state);
        Assert.Contains($"parameter server at {deadServer} is not reachable", error, StringComparison.Ordinal);
    }

    /// <summary>`cluster local` prints its API address on its first lines.</summary>
    private static async Task<string> WaitForApiAsync(ClusterCommand local)
    {
        var giveUpAt = DateTime.UtcNow + Startup;
        while (DateTime.UtcNow < giveUpAt)
        {
            var match = System.Text.RegularExpressions.Regex.Match(local.Stdout.Replace("\n", "", StringComparison.Ordinal), @"API (http://[0-9.]+:[0-9]+)");
            if (match.Success) return match.Groups[1].Value;
            await Task.Delay(100);
        }
        Assert.Fail($"`cluster local` printed no API address.\n{local.Stdout}\n{local.Stderr}");
        return "";
    }

    private static Dictionary<string, string> Urls(string readyLine) => Cli.Local.LocalCluster.ParseUrls(readyLine);
}
