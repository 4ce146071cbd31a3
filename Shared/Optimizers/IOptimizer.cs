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

    public virtual IReadOnlyList<(string Name, float[] Values)> StateBuffers => [];

    protected void CheckRange(int offset, int parameterCount, int gradientCount)
    {
        if (parameterCount != gradientCount || offset < 0 || offset > ElementCount - parameterCount)
            throw new ArgumentException(
                $"optimizer over {ElementCount} elements got offset {offset}, {parameterCount} parameters and {gradientCount} gradients");
    }
}
