namespace Cluster.Coordinator.Jobs;

/// <summary>What went wrong in a job without stopping it.</summary>
public sealed partial class JobRecord
{
    /// <summary>Gradients the parameter servers refused for NaN or Inf, as the workers reported them (never applied).</summary>
    public long RejectedGradients { get; private set; }

    public void RecordRejectedGradients(long count)
    {
        if (count < 0) throw new ArgumentException($"rejected_gradients: {count}; expected 0 or more");
        RejectedGradients += count;
    }
}
