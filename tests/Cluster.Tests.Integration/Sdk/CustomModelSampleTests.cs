using System.Globalization;
using System.Text.RegularExpressions;
using Cluster.Tests.Integration.Models;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Sdk;

/// <summary>
/// The bring-your-own-model sample (samples/CustomModel, built with the solution) on real
/// processes: its task loaded by the workers from its assembly, and its own training loop run
/// by `cluster launch` through DistributedOptimizer. Chance on its 3 classes is 33 %.
/// </summary>
[Trait("Tier", "e2e")]
public sealed partial class CustomModelSampleTests(ITestOutputHelper output)
{
    private const string TaskType = "CustomModel.SpiralTask";

    /// <summary>samples/CustomModel's own build output, in the tests' configuration.</summary>
    private static string SampleAssembly()
    {
        var framework = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        string configuration = framework.Parent!.Name;
        var root = framework;
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Cluster.sln"))) root = root.Parent;
        Assert.NotNull(root);
        string path = Path.Combine(root.FullName, "samples", "CustomModel", "bin", configuration, framework.Name, "CustomModel.dll");
        Assert.True(File.Exists(path), $"the sample is not built at {path}");
        return path;
    }

    [Fact]
    public async Task The_sample_task_trains_on_the_cluster_from_its_assembly()
    {
        var epochs = await ModelZooTrainingTests.TrainAsync(output,
            "--assembly", SampleAssembly(), "--type", TaskType, "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "--seed", "1");

        double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
        Assert.True(accuracy > 0.8, $"the spiral task reached {accuracy:P2}; expected well above the 33 % of chance (> 80 %)");
        Assert.True(epochs[^1].GetProperty("trainLoss").GetDouble() < epochs[0].GetProperty("trainLoss").GetDouble(), "train loss did not fall");
        var confusion = epochs[^1].GetProperty("confusion").EnumerateArray().Select(c => c.GetInt64()).ToList();
        Assert.Equal(9, confusion.Count);
        Assert.Equal(600, confusion.Sum());
    }

    [Theory]
    [InlineData("missing-file", TaskType, "assembly: '")]
    [InlineData("sample", "CustomModel.NoSuchTask", "type: 'CustomModel.NoSuchTask' is not in assembly")]
    [InlineData("sample", "CustomModel.Spirals", "type: 'CustomModel.Spirals' in '")]
    public async Task A_bad_assembly_or_type_is_refused_with_a_clear_error(string assembly, string type, string expected)
    {
        string path = assembly == "sample" ? SampleAssembly() : Path.Combine(Path.GetTempPath(), "no-such-dir", "Missing.dll");

        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(1), ["local", "--assembly", path, "--type", type]);

        Assert.Equal(2, exitCode);
        Assert.Contains(expected, stderr);
        if (assembly == "missing-file") Assert.Contains("does not exist", stderr);
        if (type == "CustomModel.Spirals") Assert.Contains($"implementing Cluster.Sdk.ITrainingTask; expected one of: {TaskType}", stderr);
    }

    [Fact]
    public async Task The_sample_training_loop_trains_with_the_distributed_optimizer_under_cluster_launch()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(3),
            ["launch", "--workers", "2", "--", "dotnet", SampleAssembly(), "3"]);
        output.WriteLine(stdout);

        Assert.True(exitCode == 0, $"cluster launch exit code {exitCode}\n{stdout}\n{stderr}");
        var lines = EpochLine().Matches(stdout).Select(m => (
            Rank: int.Parse(m.Groups["rank"].Value, CultureInfo.InvariantCulture),
            Epoch: int.Parse(m.Groups["epoch"].Value, CultureInfo.InvariantCulture),
            Loss: double.Parse(m.Groups["loss"].Value, CultureInfo.InvariantCulture),
            Accuracy: double.Parse(m.Groups["accuracy"].Value, CultureInfo.InvariantCulture),
            Step: long.Parse(m.Groups["step"].Value, CultureInfo.InvariantCulture))).ToList();
        Assert.Equal(6, lines.Count);
        var last = lines.Where(l => l.Epoch == 3).OrderBy(l => l.Rank).ToList();
        Assert.Equal([0, 1], last.Select(l => l.Rank));
        // Both ranks hold the same model after every step: the same test accuracy, the same step count.
        Assert.Equal(last[0].Accuracy, last[1].Accuracy);
        Assert.Equal(last[0].Step, last[1].Step);
        Assert.True(last[0].Accuracy > 0.8, $"the sample loop reached {last[0].Accuracy:P2}; expected well above the 33 % of chance (> 80 %)");
        foreach (int rank in new[] { 0, 1 })
            Assert.True(lines.Single(l => l.Rank == rank && l.Epoch == 3).Loss < lines.Single(l => l.Rank == rank && l.Epoch == 1).Loss,
                $"rank {rank}: train loss did not fall");
    }

    [GeneratedRegex(@"\[rank \d\] rank (?<rank>\d) epoch (?<epoch>\d+) train-loss (?<loss>[0-9.]+) test-accuracy (?<accuracy>[0-9.]+) step (?<step>\d+)")]
    private static partial Regex EpochLine();
}
