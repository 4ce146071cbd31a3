using Cluster.Shared.Telemetry;

namespace Cluster.Worker.Telemetry;

/// <summary>A worker process's metrics (for /metrics) and step spans (for /timeline).</summary>
public sealed class WorkerTelemetry
{
    public WorkerTelemetry()
    {
        var phases = Metrics.Histogram("cluster_worker_step_phase_seconds",
            "Time a training step spent in each phase: compute (forward/backward), push (gradient out), wait (barrier), pull (parameters in)",
            Histogram.SecondsBuckets, "phase");
        PhaseSeconds = [.. Enum.GetValues<StepPhase>().Take(4).Select(p => phases.WithLabels(SpanRecorder.PhaseName(p)))];
        Steps = Metrics.Counter("cluster_worker_steps_total", "Training steps finished").WithLabels();
        Samples = Metrics.Counter("cluster_worker_samples_total", "Training samples processed").WithLabels();
        BytesPushed = Metrics.Counter("cluster_worker_pushed_bytes_total", "Gradient bytes sent to parameter servers").WithLabels();
        BytesPulled = Metrics.Counter("cluster_worker_pulled_bytes_total", "Parameter bytes received from parameter servers").WithLabels();
        Heartbeats = Metrics.Counter("cluster_worker_heartbeats_total", "Heartbeats answered by the coordinator").WithLabels();
        JobsFinished = Metrics.Counter("cluster_worker_jobs_total", "Jobs this worker took part in, by how its part ended", "outcome");
        SamplesPerSecond = Metrics.Gauge("cluster_worker_samples_per_second", "Training throughput of this worker over its last progress report").WithLabels();
        Training = Metrics.Gauge("cluster_worker_training", "1 while the worker trains a job, else 0").WithLabels();
    }

    public MetricRegistry Metrics { get; } = new();
    public SpanRecorder Spans { get; } = new();

    /// <summary>Indexed by <see cref="StepPhase"/> (compute, push, wait, pull).</summary>
    public HistogramChild[] PhaseSeconds { get; }
    public CounterChild Steps { get; }
    public CounterChild Samples { get; }
    public CounterChild BytesPushed { get; }
    public CounterChild BytesPulled { get; }
    public CounterChild Heartbeats { get; }
    public Counter JobsFinished { get; }
    public GaugeChild SamplesPerSecond { get; }
    public GaugeChild Training { get; }
}
