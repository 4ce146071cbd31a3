using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Data;
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

    [Theory]
    [InlineData("lstm")]
    [InlineData("transformer")]
    public async Task Language_models_reach_a_validation_loss_40_percent_below_the_uniform_guess_on_the_default_corpus(string model)
    {
        int vocabulary = TextCorpus.Load(null).Vocabulary.Count;
        double uniform = Math.Log(vocabulary);

        var epochs = await TrainAsync(output, ["--model", model, "--dataset", "text", "--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--seed", "1"]);

        double loss = epochs[^1].GetProperty("testLoss").GetDouble();
        double perplexity = epochs[^1].GetProperty("perplexity").GetDouble();
        output.WriteLine($"{model}: validation loss {loss:0.000} nats/char, perplexity {perplexity:0.00}; uniform guess ln({vocabulary}) = {uniform:0.000}, bound {0.6 * uniform:0.000}");
        Assert.True(loss <= 0.6 * uniform, $"{model} validation loss {loss:0.000} is not 40 % below ln({vocabulary}) = {uniform:0.000}");
        Assert.Equal(Math.Exp(loss), perplexity, 6);
        Assert.True(epochs[^1].GetProperty("trainLoss").GetDouble() < epochs[0].GetProperty("trainLoss").GetDouble(), "train loss did not fall");
    }

    [Theory]
    [InlineData("cross-entropy")]
    [InlineData("mse")]
    [InlineData("bce")]
    public async Task Each_loss_trains_a_classifier_on_the_synthetic_dataset(string loss)
    {
        var epochs = await TrainAsync(output, ["--model", "mlp", "--dataset", "synthetic", "--loss", loss, "--epochs", "1", "--train-limit", "3000"]);

        double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
        Assert.True(accuracy >= 0.9, $"mlp with {loss} reached {accuracy:P2} on the synthetic set; expected >= 90 %");
        // The result carries the merged confusion matrix over the whole test set and per-class figures.
        var confusion = epochs[^1].GetProperty("confusion").EnumerateArray().Select(c => c.GetInt64()).ToList();
        Assert.Equal(100, confusion.Count);
        Assert.Equal(1000, confusion.Sum());
        var perClass = epochs[^1].GetProperty("perClass").EnumerateArray().ToList();
        Assert.Equal(10, perClass.Count);
        Assert.Equal(1000, perClass.Sum(c => c.GetProperty("support").GetInt64()));
        Assert.Equal(epochs[^1].GetProperty("f1").GetDouble(), perClass.Average(c => c.GetProperty("f1").GetDouble()), 9);
    }

    [Fact]
    public async Task A_cnn_trains_on_cifar10_binary_files()
    {
        // Learnable CIFAR-10-format files: each class's images are its own colour plus noise.
        string directory = Directory.CreateTempSubdirectory("cifar10-e2e-").FullName;
        try
        {
            var random = new Random(5);
            foreach (var (file, count) in new[] { ("data_batch_1.bin", 1000), ("data_batch_2.bin", 1000), ("test_batch.bin", 500) })
            {
                var bytes = new byte[count * 3073];
                for (int r = 0; r < count; r++)
                {
                    int label = random.Next(10);
                    bytes[r * 3073] = (byte)label;
                    for (int i = 0; i < 3072; i++)
                        bytes[r * 3073 + 1 + i] = (byte)((label * 23 + i / 1024 * 7 + random.Next(16)) % 256);
                }
                File.WriteAllBytes(Path.Combine(directory, file), bytes);
            }

            var epochs = await TrainAsync(output, ["--model", "cnn", "--dataset", "cifar10", "--data", directory, "--epochs", "2", "--batch-size", "32", "--lr", "3e-3"]);

            double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
            Assert.True(accuracy >= 0.8, $"cnn reached {accuracy:P2} on colour-coded CIFAR-10 files; expected >= 80 % (chance: 10 %)");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
