using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.Aggregation;

/// <summary>
/// Holds each rank's gradient for the current step and combines any partition of them, always
/// in rank order (so the result does not depend on arrival order), as the mean over all samples
/// of the step: <c>sum_r (n_r / N) * g_r</c>, where <c>g_r</c> is rank r's mean gradient over its
/// <c>n_r</c> samples. That equals the gradient of one batch made of every rank's samples.
/// Buffers are allocated once per job and reused every step.
/// <para>
/// A rank's buffer holds float32 values, or (<see cref="StoredAs"/>) a dense push of a 2-byte wire
/// type as it came off the wire, its elements packed from the start of the buffer's bytes. Those
/// are decoded only as a range is combined, so a bfloat16 gradient crosses memory at half the
/// size and is never written out as float32: combine and apply a partition in blocks of
/// <see cref="BlockElements"/> and each block is decoded, combined and consumed in cache. A
/// bfloat16 gradient that is the step's alone is not even decoded: the optimizer reads it as it
/// came (<see cref="SoleBFloat16"/>).
/// </para>
/// </summary>
public sealed class StepAggregator
{
    /// <summary>Elements per block when a partition is combined through a small scratch (64 KiB of float32: it stays in cache).</summary>
    public const int BlockElements = 16 * 1024;

    private float[][] _rankGradients;
    private int[] _sampleCounts;
    private DType[] _encodings;
    [ThreadStatic] private static float[]? t_decoded;   // a block decoded for AddTerm: one per thread, as appliers combine partitions at once

    public StepAggregator(int worldSize, int elementCount)
    {
        _rankGradients = new float[worldSize][];
        for (int r = 0; r < worldSize; r++) _rankGradients[r] = new float[elementCount];
        _sampleCounts = new int[worldSize];
        _encodings = new DType[worldSize];
    }

    /// <summary>How a push's elements are kept until applied: its own wire type for a dense 2-byte one, float32 otherwise.</summary>
    public static DType StoredAs(DType wireType, bool sparse) =>
        !sparse && wireType is DType.Bfloat16 or DType.Float16 ? wireType : DType.Float32;

    public int WorldSize => _rankGradients.Length;

    /// <summary>Rank's receive buffer for the current step.</summary>
    public Memory<float> BufferFor(int rank) => _rankGradients[rank];

    public int SampleCount(int rank) => _sampleCounts[rank];

    /// <summary>How rank's buffer holds its gradient this step (float32, or packed elements of a 2-byte wire type).</summary>
    public DType Encoding(int rank) => _encodings[rank];

    public void SetEncoding(int rank, DType stored) => _encodings[rank] = stored;

    /// <summary>The bytes of elements [start, start + length) of rank's buffer as it holds them.</summary>
    public Span<byte> StoredBytes(int rank, int start, int length)
    {
        int elementBytes = ElementCodec.ElementBytes(_encodings[rank]);
        return MemoryMarshal.AsBytes(_rankGradients[rank].AsSpan()).Slice(start * elementBytes, length * elementBytes);
    }

    /// <summary>Whether elements [start, start + length) of rank's gradient are all finite (no NaN, no infinity).</summary>
    public bool IsFinite(int rank, int start, int length) => ElementCodec.AllFinite(StoredBytes(rank, start, length), _encodings[rank]);

    /// <summary>Rank's own gradient of elements [start, start + destination.Length), as float32, into <paramref name="destination"/>.</summary>
    public void CopyGradient(int rank, int start, Span<float> destination) =>
        ElementCodec.Decode(StoredBytes(rank, start, destination.Length), destination, _encodings[rank]);

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
        var encodings = new DType[worldSize];
        Array.Copy(_encodings, encodings, old);
        (_rankGradients, _sampleCounts, _encodings) = (gradients, counts, encodings);
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
            float weight = (float)((double)_sampleCounts[r] / total);
            // The first rank's term is written, not added to a cleared buffer: one pass less over
            // the partition, and the same floats (fma(g, w, 0) rounds exactly as g * w).
            if (first) WriteTerm(r, start, weight, destination);
            else AddTerm(r, start, weight, destination);
            first = false;
        }
    }

    /// <summary>destination = weight * g_r (a stored-encoded gradient is decoded in place first: the same floats).</summary>
    private void WriteTerm(int rank, int start, float weight, Span<float> destination)
    {
        if (_encodings[rank] == DType.Float32)
        {
            TensorPrimitives.Multiply(_rankGradients[rank].AsSpan(start, destination.Length), weight, destination);
            return;
        }
        CopyGradient(rank, start, destination);
        TensorPrimitives.Multiply(destination, weight, destination);
    }

    /// <summary>destination += weight * g_r (fused), decoding a stored-encoded gradient a block at a time.</summary>
    private void AddTerm(int rank, int start, float weight, Span<float> destination)
    {
        if (_encodings[rank] == DType.Float32)
        {
            TensorPrimitives.FusedMultiplyAdd(_rankGradients[rank].AsSpan(start, destination.Length), weight, destination, destination);
            return;
        }
        for (int offset = 0; offset < destination.Length; offset += BlockElements)
        {
            var part = destination.Slice(offset, Math.Min(BlockElements, destination.Length - offset));
            var decoded = (t_decoded ??= new float[BlockElements]).AsSpan(0, part.Length);
            CopyGradient(rank, start + offset, decoded);
            TensorPrimitives.FusedMultiplyAdd(decoded, weight, part, part);
        }
    }

    /// <summary>
    /// The combined gradient of elements [start, start + scratch.Length): when one rank alone
    /// takes part (every other one excluded or without samples) and holds float32, that rank's own
    /// buffer, not a copy: its weight is 1, so these are the floats <see cref="Combine"/> would
    /// write. Otherwise <paramref name="scratch"/>, combined (a sole rank holding a 2-byte wire
    /// type is decoded into it). An optimizer may overwrite what it is given: a rank's buffer is
    /// written afresh by its next push.
    /// </summary>
    public Span<float> Combined(int start, Span<float> scratch, ReadOnlySpan<bool> excluded = default)
    {
        switch (SoleRank(excluded))
        {
            case Several:
                Combine(start, scratch, excluded);
                return scratch;
            case None:
                scratch.Clear();
                return scratch;
            case var sole when _encodings[sole] == DType.Float32:
                return _rankGradients[sole].AsSpan(start, scratch.Length);
            case var sole:
                CopyGradient(sole, start, scratch);
                return scratch;
        }
    }

    /// <summary>
    /// Elements [start, start + length) of the gradient as bfloat16, as they came off the wire,
    /// when one rank alone takes part and pushed bfloat16 (its weight is 1: these are the step's
    /// gradient exactly); empty otherwise (then use <see cref="Combined"/>).
    /// </summary>
    public ReadOnlySpan<ushort> SoleBFloat16(int start, int length, ReadOnlySpan<bool> excluded = default) =>
        SoleRank(excluded) is >= 0 and var sole && _encodings[sole] == DType.Bfloat16
            ? MemoryMarshal.Cast<byte, ushort>(StoredBytes(sole, start, length))
            : [];

    private const int None = -1, Several = -2;

    /// <summary>The one rank that takes part (not excluded, with samples), or <see cref="None"/> or <see cref="Several"/>.</summary>
    private int SoleRank(ReadOnlySpan<bool> excluded)
    {
        int sole = None;
        for (int r = 0; r < WorldSize; r++)
        {
            if (_sampleCounts[r] == 0 || IsExcluded(excluded, r)) continue;
            if (sole >= 0) return Several;
            sole = r;
        }
        return sole;
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
