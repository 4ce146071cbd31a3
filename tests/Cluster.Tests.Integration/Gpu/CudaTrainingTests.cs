using System.Diagnostics;
using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Worker.Training;
using TorchSharp;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Gpu;

/// <summary>The CUDA path of the worker: a real training step on the GPU, gradients equal to the CPU's, and a GPU worker in a cluster.</summary>
[Trait("Tier", "gpu")]
public sealed class CudaTrainingTests(ITestOutputHelper output)
{
    [GpuFact]
    public void The_cnn_trains_on_cuda_and_its_loss_falls()
    {
        var train = DatasetCatalog.Load("fashion-mnist", null).Train.Take(6400);
        using var loader = new BatchLoader(train, torch.CUDA);
        using var model = ModelZoo.Create("cnn", seed: 1);
        model.to(torch.CUDA);
        using var optimizer = torch.optim.Adam(model.parameters(), 1e-3, 0.9, 0.999);
        var order = Enumerable.Range(0, train.Count).ToArray();

        double first = 0, last = 0;
        var watch = Stopwatch.StartNew();
        for (int step = 0; step < 100; step++)
        {
            double loss = GradientStep.Compute(model, loader, order.AsSpan(step * 64 % train.Count, 64)) / 64;
            optimizer.step();
            if (step < 5) first += loss / 5;
            if (step >= 95) last += loss / 5;
        }
        output.WriteLine($"cuda: {100 * 64 / watch.Elapsed.TotalSeconds:0} samples/s, loss {first:0.000} -> {last:0.000}");
        Assert.True(last < first * 0.7, $"loss fell only from {first:0.000} to {last:0.000}");
    }

    [GpuFact]
    public void Gradients_on_cuda_equal_gradients_on_cpu()
    {
        var train = DatasetCatalog.Load("fashion-mnist", null).Train.Take(256);
        int[] batch = [.. Enumerable.Range(0, 128)];
        float[] Gradient(torch.Device device)
        {
            using var loader = new BatchLoader(train, device);
            using var model = ModelZoo.Create("cnn", seed: 2);
            model.to(device);
            GradientStep.Compute(model, loader, batch);
            using var vector = new ParameterVector(model);
            var flat = new float[vector.ElementCount];
            vector.ReadGradients(System.Runtime.InteropServices.MemoryMarshal.AsBytes(flat.AsSpan()));
            return flat;
        }

        float[] cpu = Gradient(torch.CPU), cuda = Gradient(torch.CUDA);

        double scale = cpu.Max(Math.Abs), largest = cpu.Zip(cuda).Max(p => Math.Abs(p.First - p.Second));
        output.WriteLine($"largest |cpu - cuda| = {largest:E3} of largest |gradient| {scale:E3}");
        Assert.True(largest <= 1e-4 * scale, $"largest difference {largest:E3} exceeds 1e-4 of {scale:E3}");
    }

    [GpuFact]
    public async Task A_cuda_worker_trains_the_cnn_through_a_parameter_server()
    {
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(10),
            "local", "--workers", "1", "--device", "cuda", "--epochs", "1", "--train-limit", "12800", "--test-limit", "2000", "--output", "json");

        Assert.True(exitCode == 0, stderr);
        using var result = JsonDocument.Parse(stdout);
        var epoch = result.RootElement.GetProperty("epochs")[0];
        output.WriteLine($"cuda worker: {epoch.GetProperty("samplesPerSecond").GetDouble():0} samples/s, accuracy {epoch.GetProperty("accuracy").GetDouble():P2}");
        Assert.InRange(epoch.GetProperty("accuracy").GetDouble(), 0.75, 1.0);
    }
}
