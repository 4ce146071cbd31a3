using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.AllReduce;

/// <summary>The README's main command with --scheme allreduce, at full size: Fashion-MNIST, cnn, 2 workers, 2 epochs, no parameter server.</summary>
[Trait("Tier", "e2e")]
[Trait("Size", "full")]
public sealed class AllReduceMainJobTests
{
    [Fact]
    public async Task The_main_job_with_ring_all_reduce_reaches_88_percent_test_accuracy()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(15), "local", "--scheme", "allreduce", "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        Assert.Contains("ring all-reduce", stderr, StringComparison.Ordinal);
        using var result = JsonDocument.Parse(stdout);
        var root = result.RootElement;
        Assert.Equal("cnn", root.GetProperty("spec").GetProperty("model").GetString());
        Assert.Equal("allreduce", root.GetProperty("spec").GetProperty("scheme").GetString());
        Assert.Equal(2, root.GetProperty("workers").GetArrayLength());
        var epochs = root.GetProperty("epochs").EnumerateArray().ToList();
        Assert.Equal(2, epochs.Count);
        double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
        Assert.True(accuracy >= 0.88, $"test accuracy {accuracy:P2} after 2 epochs; expected >= 88.0 %");
        Assert.True(epochs[^1].GetProperty("trainLoss").GetDouble() < epochs[0].GetProperty("trainLoss").GetDouble(), "train loss did not fall");
    }
}
