using System.Numerics.Tensors;

namespace Cluster.ParameterServer.Aggregation;

/// <summary>
/// Holds each rank's gradient for the current step and combines any partition of them, always
/// in rank order (so the result does not depend on arrival order), as the mean over all samples
/// of the step: <c>sum_r (n_r / N) * g_r</c>, where <c>g_r</c> is rank r's mean gradient over its
/// <c>n_r</c> samples. That equals the gradient of one batch made of every rank's samples.
/// Buffers are allocated once per job and reused every step.
/// </summary>
public sealed class StepAggregator
{
    private float[][] _rankGradients;
    private int[] _sampleCounts;

    public StepAggregator(int worldSize, int elementCount)
    {
        _rankGradients = new float[worldSize][];
        for (int r = 0; r < worldSize; r++) _rankGradients[r] = new float[elementCount];
        _sampleCounts = new int[worldSize];
    }

    public int WorldSize => _rankGradients.Length;

    /// <summary>Rank's receive buffer for the current step.</summary>
    public Memory<float> BufferFor(int rank) => _rankGradients[rank];

    public int SampleCount(int rank) => _sampleCounts[rank];

    /// <summary>Adds buffers for ranks up to <paramref name="worldSize"/> (joining workers); existing buffers stay.</summary>
    public void Grow(int worldSize, int elementCount)
    {
        int old = _rankGradients.Length;
        if (worldSize <= old) return;
        var gradients = new float[worldSize][];
        Array.Copy(_rankGradients, gradients, old);
        for (int r = old; r < worldSize; r++) gradients[r] = new float[elementCount];
        var counts = new int[worldSize];
        Array.Copy(_sampleCounts, counts, old);
        (_rankGradients, _sampleCounts) = (gradients, counts);
    }

    public void SetSampleCount(int rank, int sampleCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sampleCount);
        _sampleCounts[rank] = sampleCount;
    }

    /// <summary>
    /// Writes the combined gradient of elements [start, start + destination.Length) into
    /// <paramref name="destination"/>; ranks for which <paramref name="excluded"/> is true do not
    /// take part (their samples leave the mean too).
    /// </summary>
    public void Combine(int start, Span<float> destination, ReadOnlySpan<bool> excluded = default)
    {
        long total = 0;
        for (int r = 0; r < WorldSize; r++)
            if (!IsExcluded(excluded, r)) total += _sampleCounts[r];
        if (total == 0)
        {
            destination.Clear();
            return;
        }
        bool first = true;
        for (int r = 0; r < WorldSize; r++)
        {
            if (_sampleCounts[r] == 0 || IsExcluded(excluded, r)) continue;
            var gradient = _rankGradients[r].AsSpan(start, destination.Length);
            float weight = (float)((double)_sampleCounts[r] / total);
            // The first rank's term is written, not added to a cleared buffer: one pass less over
            // the partition, and the same floats (fma(g, w, 0) rounds exactly as g * w).
            if (first) TensorPrimitives.Multiply(gradient, weight, destination);
            else TensorPrimitives.FusedMultiplyAdd(gradient, weight, destination, destination);
            first = false;
        }
    }

    /// <summary>
    /// The combined gradient of elements [start, start + scratch.Length): when one rank alone
    /// takes part (every other one excluded or without samples), that rank's own buffer, not a
    /// copy: its weight is 1, so these are the floats <see cref="Combine"/> would write. Otherwise
    /// <paramref name="scratch"/>, combined. An optimizer may overwrite what it is given: a
    /// rank's buffer is written afresh by its next push.
    /// </summary>
    public Span<float> Combined(int start, Span<float> scratch, ReadOnlySpan<bool> excluded = default)
    {
        int sole = -1;
        for (int r = 0; r < WorldSize; r++)
        {
            if (_sampleCounts[r] == 0 || IsExcluded(excluded, r)) continue;
            if (sole >= 0)
            {
                Combine(start, scratch, excluded);
                return scratch;
            }
            sole = r;
        }
        if (sole >= 0) return _rankGradients[sole].AsSpan(start, scratch.Length);
        scratch.Clear();
        return scratch;
    }

    /// <summary>True when no rank takes part in the partition (every one excluded).</summary>
    public bool AllExcluded(ReadOnlySpan<bool> excluded)
    {
        for (int r = 0; r < WorldSize; r++)
            if (!IsExcluded(excluded, r)) return false;
        return true;
    }

    private static bool IsExcluded(ReadOnlySpan<bool> excluded, int rank) => !excluded.IsEmpty && excluded[rank];
}
