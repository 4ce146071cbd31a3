namespace Cluster.Shared.Optimizers;

/// <summary>An update rule over a flat float32 parameter vector.</summary>
public interface IOptimizer
{
    /// <summary>Number of updates applied so far.</summary>
    long StepCount { get; }

    /// <summary>Applies one update in place. <paramref name="gradient"/> may be overwritten (used as scratch).</summary>
    void Step(Span<float> parameters, Span<float> gradient);
}
