using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>The README's main command at full size: Fashion-MNIST, cnn, 2 workers, 1 parameter server, 2 epochs.</summary>
[Trait("Tier", "e2e")]
[Trait("Size", "full")]
public sealed class MainJobTests
{
    [Fact]
    public async Task The_main_job_reaches_88_percent_test_accuracy()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(15), "local", "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var result = JsonDocument.Parse(stdout);
        var root = result.RootElement;
        Assert.Equal("cnn", root.GetProperty("spec").GetProperty("model").GetString());
        Assert.Equal(2, root.GetProperty("workers").GetArrayLength());
        var epochs = root.GetProperty("epochs").EnumerateArray().ToList();
        Assert.Equal(2, epochs.Count);
        double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
        Assert.True(accuracy >= 0.88, $"test accuracy {accuracy:P2} after 2 epochs; expected >= 88.0 %");
        Assert.True(epochs[^1].GetProperty("trainLoss").GetDouble() < epochs[0].GetProperty("trainLoss").GetDouble(), "train loss did not fall");
    }

    /// <summary>Wire compression still converges: the main job with bfloat16, float16 or top-k gradients (and two parameter servers).</summary>
    [Theory]
    [InlineData("--wire-dtype", "bfloat16")]
    [InlineData("--wire-dtype", "float16")]
    [InlineData("--topk", "0.01")]
    public async Task The_main_job_with_compression_reaches_87_percent(string option, string value)
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(15), "local", "--ps", "2", option, value, "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var result = JsonDocument.Parse(stdout);
        var root = result.RootElement;
        Assert.Equal(2, root.GetProperty("parameterServers").GetArrayLength());
        double accuracy = root.GetProperty("epochs").EnumerateArray().Last().GetProperty("accuracy").GetDouble();
        Assert.True(accuracy >= 0.87, $"{option} {value}: test accuracy {accuracy:P2} after 2 epochs; expected >= 87.0 %");
    }
}
