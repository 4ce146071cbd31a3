using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Models;

/// <summary>
/// The model zoo trained on a real local cluster (`cluster local`: coordinator, parameter
/// server and 2 workers as processes, CPU), on slices of the data so that each job takes
/// well under a minute on 2 cores.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class ModelZooTrainingTests(ITestOutputHelper output)
{
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(4);

    /// <summary>Runs `cluster local ... --output json` and returns the job's epochs.</summary>
    public static async Task<List<JsonElement>> TrainAsync(ITestOutputHelper output, params string[] options)
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(JobTimeout, ["local", "--workers", "2", "--output", "json", .. options]);
        Assert.True(exitCode == 0, $"`cluster local {string.Join(' ', options)}` exit code {exitCode}\n{stderr}");
        using var result = JsonDocument.Parse(stdout);
        Assert.Equal("succeeded", result.RootElement.GetProperty("state").GetString());
        var epochs = result.RootElement.GetProperty("epochs").EnumerateArray().Select(e => e.Clone()).ToList();
        foreach (var epoch in epochs)
            output.WriteLine($"{string.Join(' ', options)}: epoch {epoch.GetProperty("epoch").GetInt32() + 1} " +
                $"train loss {epoch.GetProperty("trainLoss").GetDouble():0.0000} test loss {epoch.GetProperty("testLoss").GetDouble():0.0000} " +
                $"accuracy {epoch.GetProperty("accuracy").GetDouble():P2} ({epoch.GetProperty("seconds").GetDouble():0.0} s)");
        return epochs;
    }

    [Fact]
    public async Task Resnet_beats_cnn_on_fashion_mnist_test_accuracy_after_the_same_epochs()
    {
        string[] slice = ["--dataset", "fashion-mnist", "--epochs", "2", "--train-limit", "12000", "--test-limit", "2000", "--seed", "1"];
        var cnn = await TrainAsync(output, ["--model", "cnn", .. slice]);
        var resnet = await TrainAsync(output, ["--model", "resnet", .. slice]);

        Assert.Equal(2, cnn.Count);
        Assert.Equal(2, resnet.Count);
        double cnnAccuracy = cnn[^1].GetProperty("accuracy").GetDouble();
        double resnetAccuracy = resnet[^1].GetProperty("accuracy").GetDouble();
        output.WriteLine($"after 2 epochs: cnn {cnnAccuracy:P2}, resnet {resnetAccuracy:P2}");
        Assert.True(cnnAccuracy > 0.80, $"cnn reached only {cnnAccuracy:P2}; the comparison needs a cnn that trained");
        Assert.True(resnetAccuracy > cnnAccuracy, $"resnet {resnetAccuracy:P2} did not beat cnn {cnnAccuracy:P2} after 2 epochs");
    }
}
