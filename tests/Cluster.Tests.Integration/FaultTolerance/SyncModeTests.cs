using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.FaultTolerance;

/// <summary>
/// The asynchronous sync modes with real processes: under SSP a fast worker never trains more than
/// the staleness bound ahead of a slowed one (the server's own record of every push, read from its
/// /stats while the job runs); under ASP two workers train the Fashion-MNIST CNN to 85 %.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class SyncModeTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private const int Staleness = 2;

    [Fact]
    public async Task Under_ssp_no_worker_runs_more_than_the_staleness_ahead_of_a_slowed_one()
    {
        using var coordinator = ClusterCommand.Start("coordinator");
        var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        using var server = ClusterCommand.Start("ps", "--coordinator", urls["grpc"]);
        string stats = Cli.Local.LocalCluster.ParseUrls(await server.WaitForLineAsync("CLUSTER-READY", Startup))["http"] + "/stats";
        using var fast = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1");
        using var slow = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1", "--slow-step-ms", "60");
        using var submit = ClusterCommand.Start("submit", "--api", urls["http"], "--wait", "--output", "json",
            "--model", "mlp", "--workers", "2", "--epochs", "1", "--batch-size", "32", "--train-limit", "6400", "--test-limit", "500",
            "--sync", "ssp", "--staleness", Staleness.ToString());

        // The server's record, polled until the job ends (it is dropped when the job is released).
        using var http = TestSecurity.HttpClient();
        long maxLead = -1, polls = 0;
        while (!submit.HasExited)
        {
            var job = (await http.GetFromJsonAsync<JsonElement>(stats)).GetProperty("jobs").EnumerateArray().FirstOrDefault(j => j.GetProperty("held").GetBoolean());
            if (job.ValueKind == JsonValueKind.Object)
            {
                Assert.Equal("ssp", job.GetProperty("sync").GetString());
                maxLead = Math.Max(maxLead, job.GetProperty("maxLeadSteps").GetInt64());
                polls++;
            }
            await Task.Delay(100);
        }

        int exitCode = await submit.WaitAsync(TimeSpan.FromSeconds(120));
        Assert.True(exitCode == 0, $"exit code {exitCode}\n{submit.Stdout}\n{submit.Stderr}");
        Assert.Equal("succeeded", JsonDocument.Parse(submit.Stdout).RootElement.GetProperty("state").GetString());
        output.WriteLine($"largest lead over the slowest worker: {maxLead} steps (staleness {Staleness}), {polls} polls");
        Assert.True(polls > 5, $"only {polls} polls of the server's record while the job ran");
        // The fast worker did run ahead (the bound was exercised), and never beyond it.
        Assert.InRange(maxLead, 1, Staleness);
    }

    [Fact]
    public async Task Under_asp_two_workers_train_the_fashion_mnist_cnn_to_85_percent()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(4),
            // The whole training set: ASP's result varies from run to run, and 30,000 samples once gave 83.65 %.
            "local", "--model", "cnn", "--workers", "2", "--epochs", "1", "--batch-size", "32", "--test-limit", "2000",
            "--sync", "asp", "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var job = JsonDocument.Parse(stdout);
        Assert.Equal("asp", job.RootElement.GetProperty("spec").GetProperty("sync").GetString());
        double accuracy = job.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble();
        output.WriteLine($"ASP cnn accuracy after one epoch of 60,000 samples: {accuracy:P2}");
        Assert.InRange(accuracy, 0.85, 1.0);
    }
}
