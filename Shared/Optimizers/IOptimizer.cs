using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// An update rule over a flat float32 parameter vector. A parameter server applies it partition
/// by partition (<see cref="StepRange"/>) as partitions of a step arrive; every element's state
/// lives at the same index as the element.
/// </summary>
public interface IOptimizer
{
    /// <summary>Number of whole-vector updates applied through <see cref="Step"/>.</summary>
    long StepCount { get; }

    /// <summary>Applies the next update to the whole vector. <paramref name="gradient"/> may be overwritten.</summary>
    void Step(Span<float> parameters, Span<float> gradient);

    /// <summary>
    /// Applies update number <paramref name="step"/> (1-based) to the elements
    /// [<paramref name="offset"/>, offset + length) in place; <paramref name="parameters"/> and
    /// <paramref name="gradient"/> are those elements. The gradient may be overwritten.
    /// </summary>
    void StepRange(int offset, Span<float> parameters, Span<float> gradient, long step);

    /// <summary>
    /// <see cref="StepRange(int, Span{float}, Span{float}, long)"/> with the gradient as bfloat16
    /// elements (each the upper half of a float32), as a worker pushed them: they are read as they
    /// are, not decoded into memory first. When <paramref name="weightsBFloat16"/> is not empty the
    /// updated weights are also written into it as bfloat16, what a bfloat16 pull sends. The same
    /// floats as decoding, stepping and encoding in turn.
    /// </summary>
    void StepRange(int offset, Span<float> parameters, ReadOnlySpan<ushort> gradientBFloat16, Span<ushort> weightsBFloat16, long step);

    /// <summary>
    /// The optimizer's per-element state by name (torch's names: <c>exp_avg</c>, <c>exp_avg_sq</c>,
    /// <c>momentum_buffer</c>), each as long as the vector: what a checkpoint saves and restores.
    /// </summary>
    IReadOnlyList<(string Name, float[] Values)> StateBuffers => [];
}

/// <summary>The whole-vector step in terms of <see cref="IOptimizer.StepRange"/>.</summary>
public abstract class FlatOptimizer(int elementCount) : IOptimizer
{
    public int ElementCount { get; } = elementCount;
    public long StepCount { get; private set; }

    public void Step(Span<float> parameters, Span<float> gradient)
    {
        CheckRange(0, parameters.Length, gradient.Length);
        StepRange(0, parameters, gradient, ++StepCount);
    }

    public abstract void StepRange(int offset, Span<float> parameters, Span<float> gradient, long step);

    /// <summary>Decodes, steps and encodes a block at a time; an optimizer overrides this with a fused pass.</summary>
    public virtual void StepRange(int offset, Span<float> parameters, ReadOnlySpan<ushort> gradientBFloat16, Span<ushort> weightsBFloat16, long step)
    {
        CheckRange(offset, parameters.Length, gradientBFloat16.Length);
        CheckCopy(parameters.Length, weightsBFloat16.Length);
        Span<float> gradient = stackalloc float[DecodeBlockElements];
        for (int start = 0; start < parameters.Length; start += DecodeBlockElements)
        {
            int length = Math.Min(DecodeBlockElements, parameters.Length - start);
            var block = gradient[..length];
            var weights = parameters.Slice(start, length);
            ElementCodec.Decode(MemoryMarshal.AsBytes(gradientBFloat16.Slice(start, length)), block, DType.Bfloat16);
            StepRange(offset + start, weights, block, step);
            if (!weightsBFloat16.IsEmpty) ElementCodec.Encode(weights, MemoryMarshal.AsBytes(weightsBFloat16.Slice(start, length)), DType.Bfloat16);
        }
    }

    /// <summary>Elements decoded at a time by the bfloat16 step's default: 16 KiB of float32, in the L1 cache.</summary>
    private const int DecodeBlockElements = 4096;

    public virtual IReadOnlyList<(string Name, float[] Values)> StateBuffers => [];

    protected void CheckRange(int offset, int parameterCount, int gradientCount)
    {
        if (parameterCount != gradientCount || offset < 0 || offset > ElementCount - parameterCount)
            throw new ArgumentException(
                $"optimizer over {ElementCount} elements got offset {offset}, {parameterCount} parameters and {gradientCount} gradients");
    }

    protected static void CheckCopy(int parameterCount, int copyCount)
    {
        if (copyCount != 0 && copyCount != parameterCount)
            throw new ArgumentException($"weights copy of {copyCount} elements for {parameterCount} parameters; expected as many, or none");
    }
}
