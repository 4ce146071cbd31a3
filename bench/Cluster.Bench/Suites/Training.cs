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
    /// <summary>The argument that makes this program the local baseline's own process (see <see cref="RunLocalBaseline"/>).</summary>
    public const string LocalBaselineArgument = "--local-baseline";

    /// <summary>
    /// Samples/s of a plain TorchSharp loop (all cores, Adam, batch <paramref name="batchSize"/>) over the
    /// batches a 1-worker cluster trains, in its second epoch (warm), measured in a process of its own:
    /// libtorch's OpenMP threads spin between kernels only while the process holds no more of them than
    /// cores, so the baseline must not share its process with anything else that ran tensor work
    /// (on 2 cores, an mlp step took 1.4 ms alone and 3.4 ms beside one other thread that had).
    /// </summary>
    public static async Task<double> LocalSamplesPerSecondAsync(string model, int sampleCount, int batchSize)
    {
        string output = await RunChildAsync(Path.Combine(AppContext.BaseDirectory, "Cluster.Bench.dll"),
            [LocalBaselineArgument, model, sampleCount.ToString(), batchSize.ToString()]);
        return double.Parse(output.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>The baseline's process: trains two epochs on one fresh thread (the only one that touches libtorch) and prints the second's samples/s.</summary>
    public static void RunLocalBaseline(string model, int sampleCount, int batchSize)
    {
        double samplesPerSecond = 0;
        var thread = new Thread(() =>
        {
            torch.set_num_threads(Environment.ProcessorCount);
            // Unless CLUSTER_BASELINE_UNPINNED=1: one OpenMP thread per core, as a worker pins its team, so
            // that the baseline is the fastest this loop runs here and not whichever placement the scheduler picks.
            if (Environment.GetEnvironmentVariable("CLUSTER_BASELINE_UNPINNED") != "1") OpenMpTeam.PinToCores();
            var train = DatasetCatalog.Load("fashion-mnist", null).Train.Take(sampleCount);
            using var loader = new BatchLoader(train, torch.CPU);
            using var network = ModelZoo.Create(model, seed: 1);
            using var optimizer = torch.optim.Adam(network.parameters(), 1e-3, 0.9, 0.999);
            for (int epoch = 0; epoch < 2; epoch++)
            {
                var plan = new EpochPlan(train.Count, seed: 1, epoch, worldSize: 1, batchSize);
                var watch = Stopwatch.StartNew();
                for (int step = 0; step < plan.StepCount; step++)
                {
                    GradientStep.Compute(network, loader, plan.GlobalBatch(step));
                    optimizer.step();
                }
                samplesPerSecond = train.Count / watch.Elapsed.TotalSeconds;
            }
        }) { Name = "local baseline" };
        thread.Start();
        thread.Join();
        Console.WriteLine(samplesPerSecond.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Samples/s of the second training epoch of `cluster local` (warm; from the job's own figures).</summary>
    public static async Task<double> ClusterSamplesPerSecondAsync(string model, int workers, int sampleCount, int batchSize, params string[] extra)
    {
        string output = await RunChildAsync(Path.Combine(AppContext.BaseDirectory, "cluster.dll"),
            ["local", "--model", model, "--workers", workers.ToString(), "--epochs", "2", "--batch-size", batchSize.ToString(),
             "--train-limit", sampleCount.ToString(), "--test-limit", "500", "--output", "json", .. extra]);
        using var result = JsonDocument.Parse(output);
        return result.RootElement.GetProperty("epochs")[1].GetProperty("samplesPerSecond").GetDouble();
    }

    private static async Task<string> RunChildAsync(string program, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(program);
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{Path.GetFileName(program)} {string.Join(' ', start.ArgumentList.Skip(1))} failed ({process.ExitCode}): {await stderr}");
        return await stdout;
    }
}
