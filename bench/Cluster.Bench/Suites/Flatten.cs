using System.Diagnostics;
using System.Runtime.InteropServices;
using Cluster.Worker.Training;
using TorchSharp;

namespace Cluster.Bench.Suites;

/// <summary>Gradient flatten (model → wire buffer) and parameter unflatten (wire buffer → model) through Tensor.bytes.</summary>
public static class Flatten
{
    public static (double FlattenGBps, double UnflattenGBps) Measure(int elementCount, int repeats)
    {
        using var model = torch.nn.Sequential(
            ("a", torch.nn.Linear(elementCount / 4000, 2000)),
            ("b", torch.nn.Linear(2000, 2000)));
        using (var scope = torch.NewDisposeScope())
            model.forward(torch.ones(1, elementCount / 4000)).sum().backward();
        using var vector = new ParameterVector(model);
        var buffer = new float[vector.ElementCount];
        var bytes = MemoryMarshal.AsBytes(buffer.AsSpan());
        vector.ReadGradients(bytes);
        vector.WriteParameters(bytes);

        var watch = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) vector.ReadGradients(bytes);
        double flatten = (double)bytes.Length * repeats / watch.Elapsed.TotalSeconds / 1e9;
        watch.Restart();
        for (int i = 0; i < repeats; i++) vector.WriteParameters(bytes);
        double unflatten = (double)bytes.Length * repeats / watch.Elapsed.TotalSeconds / 1e9;
        return (flatten, unflatten);
    }
}
