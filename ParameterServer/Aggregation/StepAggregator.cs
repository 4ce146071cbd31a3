using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Cluster.ParameterServer.Aggregation;

/// <summary>
/// Collects one gradient per rank for the current step and combines them, always in rank
/// order (so the result does not depend on arrival order), as the mean over all samples of
/// the step: <c>sum_r (n_r / N) * g_r</c> where <c>g_r</c> is rank r's mean gradient over its
/// <c>n_r</c> samples. This equals the gradient of one batch made of every rank's samples.
/// Buffers are allocated once per job and reused every step.
/// </summary>
public sealed class StepAggregator
{
    private readonly byte[][] _rankGradients;
    private readonly int[] _sampleCounts;
    private readonly bool[] _arrived;
    private int _arrivedCount;

    public StepAggregator(int worldSize, int elementCount)
    {
        _rankGradients = new byte[worldSize][];
        for (int r = 0; r < worldSize; r++) _rankGradients[r] = new byte[elementCount * sizeof(float)];
        _sampleCounts = new int[worldSize];
        _arrived = new bool[worldSize];
    }

    public int WorldSize => _arrived.Length;
    public bool IsComplete => _arrivedCount == WorldSize;

    /// <summary>Rank's receive buffer for the current step (written before <see cref="MarkArrived"/>).</summary>
    public Memory<byte> BufferFor(int rank) => _rankGradients[rank];

    public bool HasArrived(int rank) => _arrived[rank];

    public void MarkArrived(int rank, int sampleCount)
    {
        if (_arrived[rank]) throw new InvalidOperationException($"rank {rank} already pushed this step");
        _arrived[rank] = true;
        _sampleCounts[rank] = sampleCount;
        _arrivedCount++;
    }

    /// <summary>Writes the combined gradient into <paramref name="destination"/> and resets for the next step.</summary>
    public void Combine(Span<float> destination)
    {
        if (!IsComplete) throw new InvalidOperationException($"only {_arrivedCount} of {WorldSize} ranks have pushed");
        long total = 0;
        foreach (int n in _sampleCounts) total += n;
        destination.Clear();
        if (total > 0)
        {
            for (int r = 0; r < WorldSize; r++)
            {
                if (_sampleCounts[r] == 0) continue;
                float weight = (float)((double)_sampleCounts[r] / total);
                var gradient = MemoryMarshal.Cast<byte, float>(_rankGradients[r].AsSpan());
                if (weight == 1f) gradient.CopyTo(destination);
                else TensorPrimitives.MultiplyAdd(gradient, weight, destination, destination);
            }
        }
        Array.Clear(_arrived);
        _arrivedCount = 0;
    }
}
