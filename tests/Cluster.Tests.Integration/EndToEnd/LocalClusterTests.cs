using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>`cluster local` as a user runs it: real processes, real data, real exit codes.</summary>
[Trait("Tier", "e2e")]
public sealed class LocalClusterTests
{
    private static readonly TimeSpan SmallJobTimeout = TimeSpan.FromMinutes(4);

    [Fact]
    public async Task A_small_job_trains_reports_metrics_as_json_and_leaves_no_process_behind()
    {
        // As a newcomer runs it: no secret given, so `cluster local` makes one.
        using var command = ClusterCommand.StartWith(new Dictionary<string, string?> { ["CLUSTER_SECRET"] = null },
            "local", "--model", "mlp", "--workers", "2", "--epochs", "1", "--train-limit", "6000", "--test-limit", "2000", "--output", "json");
        int exitCode = await command.WaitAsync(SmallJobTimeout);

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{command.Stderr}");
        Assert.Contains("Cluster secret: generated for this run", command.Stderr, StringComparison.Ordinal);
        using var result = JsonDocument.Parse(command.Stdout);
        var root = result.RootElement;
        Assert.Equal("succeeded", root.GetProperty("state").GetString());
        var epochs = root.GetProperty("epochs").EnumerateArray().ToList();
        Assert.Single(epochs);
        var epoch = epochs[0];
        // 6000 samples of Fashion-MNIST are enough for an MLP to beat chance (10 %) by far.
        Assert.InRange(epoch.GetProperty("accuracy").GetDouble(), 0.70, 1.0);
        foreach (string metric in new[] { "precision", "recall", "f1" })
            Assert.InRange(epoch.GetProperty(metric).GetDouble(), 0.5, 1.0);
        Assert.InRange(epoch.GetProperty("trainLoss").GetDouble(), 0.05, 2.3);
        Assert.InRange(epoch.GetProperty("testLoss").GetDouble(), 0.05, 2.3);
        Assert.True(epoch.GetProperty("samplesPerSecond").GetDouble() > 0);
        Assert.Equal(2, root.GetProperty("workers").GetArrayLength());

        Assert.Empty(ProcessTable.WithCommandLineContaining($"--parent-pid {command.ProcessId}"));
    }

    [Theory]
    [InlineData("--model", "resnet9000", "model: 'resnet9000' is not a known model")]
    [InlineData("--epochs", "0", "epochs: 0 is out of range")]
    [InlineData("--epochs", "-3", "epochs: -3 is out of range")]
    [InlineData("--batch-size", "0", "batch-size: 0 is out of range")]
    [InlineData("--workers", "0", "workers: 0 is out of range")]
    [InlineData("--optimizer", "adagrad", "optimizer: 'adagrad' is not a known optimizer")]
    [InlineData("--data", "/nonexistent/fashion", "data: /nonexistent/fashion lacks train-images-idx3-ubyte")]
    [InlineData("--output", "yaml", "output: 'yaml' is not a format")]
    public async Task Bad_input_is_refused_with_a_message_naming_the_field(string option, string value, string expected)
    {
        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromSeconds(60), "local", option, value);

        Assert.Equal(2, exitCode);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("worker")]
    [InlineData("ps")]
    public async Task A_role_that_cannot_reach_the_coordinator_names_the_address_and_exits(string role)
    {
        const string address = "http://127.0.0.1:9";
        var started = DateTime.UtcNow;
        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromSeconds(60), role, "--coordinator", address, "--connect-timeout", "2");

        Assert.NotEqual(0, exitCode);
        Assert.Contains($"coordinator at {address} is not reachable", stderr, StringComparison.Ordinal);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(30), "gave up too late");
    }

    [Fact]
    public async Task Status_of_an_unreachable_coordinator_names_the_address()
    {
        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromSeconds(60), "status", "--api", "http://127.0.0.1:9");

        Assert.Equal(1, exitCode);
        Assert.Contains("coordinator API at http://127.0.0.1:9 is not reachable", stderr, StringComparison.Ordinal);
    }
}
