using System.Diagnostics;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;

namespace Cluster.Bench.Suites;

/// <summary>
/// What one parameter-server sync step costs in CPU apart from the network, on one core: the
/// optimizer over the whole vector, and the wire type's encode and decode. Explains where a
/// sync step's time goes (bench --only ps-phases).
/// </summary>
public static class ServerPhases
{
    public static IEnumerable<(string Name, double Millis)> Measure(int elementCount, int repeats)
    {
        var weights = new float[elementCount];
        var gradient = Enumerable.Repeat(1e-3f, elementCount).ToArray();
        var wire = new byte[elementCount * 4];
        var optimizer = OptimizerGroups.Create(new OptimizerSettings(), [], 0, elementCount);
        yield return ("adam step over the whole vector", Best(repeats, () => optimizer.StepRange(0, weights, gradient, 1)));
        yield return ("float32 copy", Best(repeats, () => ElementCodec.Encode(gradient, wire, DType.Float32)));
        yield return ("bfloat16 encode", Best(repeats, () => ElementCodec.Encode(gradient, wire, DType.Bfloat16)));
        yield return ("bfloat16 decode", Best(repeats, () => ElementCodec.Decode(wire.AsSpan(0, elementCount * 2), gradient, DType.Bfloat16)));
    }

    /// <summary>
    /// One Adam step over <paramref name="elementCount"/> elements whose gradients stopped coming
    /// 800 steps ago (by then their first moment is a subnormal float, or would be without
    /// <see cref="TinyState"/>), and the same step over elements that still get gradients: best of
    /// <paramref name="repeats"/>, in ms.
    /// </summary>
    public static (double Ordinary, double Decaying) DecayingStateMillis(int elementCount, int repeats)
    {
        var (ordinary, decaying) = (OptimizerGroups.Create(new OptimizerSettings(), [], 0, elementCount), OptimizerGroups.Create(new OptimizerSettings(), [], 0, elementCount));
        var (ordinaryWeights, decayingWeights) = (new float[elementCount], new float[elementCount]);
        var gradient = Enumerable.Repeat(1e-3f, elementCount).ToArray();
        var zeros = new float[elementCount];
        long step = 1;
        ordinary.StepRange(0, ordinaryWeights, gradient, step);
        decaying.StepRange(0, decayingWeights, gradient, step);
        for (; step <= 800; step++) decaying.StepRange(0, decayingWeights, zeros, step + 1);
        return (Best(repeats, () => ordinary.StepRange(0, ordinaryWeights, gradient, 2)),
            Best(repeats, () => decaying.StepRange(0, decayingWeights, zeros, ++step)));
    }

    /// <summary>
    /// A parameter server's update of a whole step, without the network: from a 1-worker push
    /// of <paramref name="elementCount"/> float32 elements received whole to every partition at
    /// the new version (the NaN/Inf check, then Adam partition by partition on
    /// <paramref name="appliers"/> appliers at once). Median of <paramref name="steps"/>, in ms.
    /// </summary>
    public static double JobUpdateMillis(int elementCount, int appliers, int steps)
    {
        var job = new JobParameters("bench-update", 1, new TensorLayout(), new OptimizerSettings(), new float[elementCount], appliers: appliers);
        try
        {
            var millis = new List<double>();
            for (long step = 0; step < steps; step++)
            {
                job.BeginPush(0, step, 64).Span.Fill(1e-3f);
                long start = Stopwatch.GetTimestamp();
                job.Received(0, elementCount);
                job.CompletePush(0);
                job.WaitForVersionAsync(step + 1, CancellationToken.None).GetAwaiter().GetResult();
                millis.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
            millis.Sort();
            return millis[millis.Count / 2];
        }
        finally
        {
            job.Close();
        }
    }

    /// <summary>
    /// The machine's memory copy rate on one core: <paramref name="elementCount"/> floats copied,
    /// best of <paramref name="repeats"/>, in GB/s of data copied. The codec passes and Adam run at
    /// memory speed, so this says which mode of the machine a run met: on these 2-core machines it
    /// has ranged from 7 to 19 GB/s, and Adam's time and what bf16 gains over fp32 move with it
    /// (BENCHMARKS.md).
    /// </summary>
    public static double CopyGigabytesPerSecond(int elementCount, int repeats)
    {
        var source = Enumerable.Repeat(1e-3f, elementCount).ToArray();
        var destination = new float[elementCount];
        double millis = Best(repeats, () => source.AsSpan().CopyTo(destination));
        return (double)elementCount * sizeof(float) / (millis / 1000) / 1e9;
    }

    private static double Best(int repeats, Action action)
    {
        double best = double.MaxValue;
        for (int i = 0; i < repeats; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        return best;
    }
}
