using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Tuning;

/// <summary>`cluster sweep` on a local cluster of 2 workers: every trial is a job; the table is ranked by validation accuracy.</summary>
[Trait("Tier", "e2e")]
public sealed class SweepTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_grid_sweep_of_four_trials_runs_each_on_the_cluster_and_ranks_them()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(5),
            "sweep", "--model", "mlp", "--dataset", "fashion-mnist", "--train-limit", "2000", "--test-limit", "1000", "--epochs", "1",
            "--lrs", "1e-5,1e-3", "--batch-sizes", "32,64", "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var result = JsonDocument.Parse(stdout);
        var trials = result.RootElement.GetProperty("trials").EnumerateArray().ToList();
        foreach (var t in trials)
            output.WriteLine($"rank {t.GetProperty("rank").GetInt32()}: trial {t.GetProperty("trial").GetInt32()} {t.GetProperty("jobId").GetString()} " +
                $"lr {t.GetProperty("learningRate").GetDouble():G3} batch {t.GetProperty("batchSize").GetInt32()} accuracy {t.GetProperty("accuracy").GetDouble():P2}");

        Assert.Equal(4, trials.Count);
        Assert.All(trials, t => Assert.Equal("succeeded", t.GetProperty("state").GetString()));
        Assert.Equal([1, 2, 3, 4], trials.Select(t => t.GetProperty("rank").GetInt32()));
        Assert.Equal(4, trials.Select(t => t.GetProperty("jobId").GetString()).Distinct().Count());
        Assert.Equal(4, trials.Select(t => (t.GetProperty("learningRate").GetDouble(), t.GetProperty("batchSize").GetInt32())).Distinct().Count());
        var accuracies = trials.Select(t => t.GetProperty("accuracy").GetDouble()).ToList();
        Assert.Equal(accuracies.OrderByDescending(a => a), accuracies);
        // 1e-3 trains an mlp in one epoch of 2000 samples; 1e-5 barely moves it.
        Assert.All(trials.Take(2), t => Assert.Equal(1e-3, t.GetProperty("learningRate").GetDouble()));
        Assert.True(accuracies[0] > accuracies[^1] + 0.2, $"best {accuracies[0]:P2} vs worst {accuracies[^1]:P2}");
    }
}
