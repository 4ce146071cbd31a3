using System.Diagnostics;
using System.Text.Json;
using Cluster.Shared.Sharding;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Worker.Training;
using TorchSharp;

namespace Cluster.Bench.Suites;

/// <summary>Training throughput: plain single-process TorchSharp, and real `cluster local` runs.</summary>
public static class Training
{
    /// <summary>Samples/s of a plain TorchSharp loop (all cores, Adam, batch <paramref name="batchSize"/>) over the same batches a 1-worker cluster trains.</summary>
    public static double LocalSamplesPerSecond(string model, int sampleCount, int batchSize)
    {
        torch.set_num_threads(Environment.ProcessorCount);
        var train = DatasetCatalog.Load("fashion-mnist", null).Train.Take(sampleCount);
        using var loader = new BatchLoader(train, torch.CPU);
        using var network = ModelZoo.Create(model, seed: 1);
        using var optimizer = torch.optim.Adam(network.parameters(), 1e-3, 0.9, 0.999);
        var plan = new EpochPlan(train.Count, seed: 1, epoch: 0, worldSize: 1, batchSize);
        GradientStep.Compute(network, loader, plan.GlobalBatch(0));
        var watch = Stopwatch.StartNew();
        for (int step = 0; step < plan.StepCount; step++)
        {
            GradientStep.Compute(network, loader, plan.GlobalBatch(step));
            optimizer.step();
        }
        return train.Count / watch.Elapsed.TotalSeconds;
    }

    /// <summary>Samples/s of the training epoch of `cluster local` (from the job's own figures; start-up excluded).</summary>
    public static async Task<double> ClusterSamplesPerSecondAsync(string model, int workers, int sampleCount, int batchSize, params string[] extra)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { Path.Combine(AppContext.BaseDirectory, "cluster.dll"), "local", "--model", model, "--workers", workers.ToString(),
                     "--epochs", "1", "--batch-size", batchSize.ToString(), "--train-limit", sampleCount.ToString(), "--test-limit", "500", "--output", "json" }.Concat(extra))
            start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0) throw new InvalidOperationException($"cluster local failed ({process.ExitCode}): {await stderr}");
        using var result = JsonDocument.Parse(await stdout);
        return result.RootElement.GetProperty("epochs")[0].GetProperty("samplesPerSecond").GetDouble();
    }
}
