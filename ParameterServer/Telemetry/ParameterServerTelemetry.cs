using System.Collections.Concurrent;
using Cluster.ParameterServer.Training;
using Cluster.Shared.Telemetry;

namespace Cluster.ParameterServer.Telemetry;

/// <summary>A parameter server's metrics (/metrics), step spans (/timeline) and per-job counts (/stats).</summary>
public sealed class ParameterServerTelemetry
{
    private readonly ConcurrentDictionary<string, JobCounts> _jobs = new();

    public ParameterServerTelemetry(ParameterStore store)
    {
        var phases = Metrics.Histogram("cluster_ps_phase_seconds",
            "Server side of a step: push (receiving one rank's gradient), aggregate (every rank pushing until the new version is published), wait (a pull waiting for the version), pull (sending it)",
            Histogram.SecondsBuckets, "phase");
        PhaseSeconds = [.. Enum.GetValues<StepPhase>().Select(p => phases.WithLabels(SpanRecorder.PhaseName(p)))];
        var pushes = Metrics.Counter("cluster_ps_pushes_total", "Gradient pushes, by outcome (accepted, or refused: stale step, bad input, NaN/Inf)", "outcome");
        PushesAccepted = pushes.WithLabels("accepted");
        PushesRefused = pushes.WithLabels("refused");
        Pulls = Metrics.Counter("cluster_ps_pulls_total", "Parameter pulls served").WithLabels();
        BytesPushed = Metrics.Counter("cluster_ps_pushed_bytes_total", "Gradient bytes received from workers").WithLabels();
        BytesPulled = Metrics.Counter("cluster_ps_pulled_bytes_total", "Parameter bytes sent to workers").WithLabels();
        var jobs = Metrics.Gauge("cluster_ps_jobs", "Jobs whose parameters this server holds");
        var versions = Metrics.Gauge("cluster_ps_job_version", "Current parameter version (steps applied) of each job held", "job");
        var rejected = Metrics.Gauge("cluster_ps_rejected_gradients", "Gradients rejected as NaN or Inf, per job held", "job");
        Metrics.BeforeScrape(() =>
        {
            jobs.WithLabels().Set(store.Jobs.Count);
            versions.Clear();
            rejected.Clear();
            foreach (var job in store.Jobs)
            {
                versions.WithLabels(job.JobId).Set(job.Version);
                rejected.WithLabels(job.JobId).Set(job.RejectedGradients);
            }
        });
    }

    public MetricRegistry Metrics { get; } = new();
    public SpanRecorder Spans { get; } = new();

    /// <summary>Indexed by <see cref="StepPhase"/>.</summary>
    public HistogramChild[] PhaseSeconds { get; }
    public CounterChild PushesAccepted { get; }
    public CounterChild PushesRefused { get; }
    public CounterChild Pulls { get; }
    public CounterChild BytesPushed { get; }
    public CounterChild BytesPulled { get; }

    public JobCounts Job(string jobId) => _jobs.GetOrAdd(jobId, id => new JobCounts(id));

    /// <summary>Every job seen since start (kept after the job is released, for the dashboard).</summary>
    public IEnumerable<JobCounts> Jobs => _jobs.Values;

    /// <summary>Records a span and its histogram sample.</summary>
    public void Phase(string jobId, int rank, long step, StepPhase phase, long startTimestamp, long endTimestamp)
    {
        Spans.Record(jobId, rank, step, phase, startTimestamp, endTimestamp);
        PhaseSeconds[(int)phase].Observe(SpanRecorder.Micros(startTimestamp, endTimestamp) / 1e6);
    }
}

/// <summary>One job's counts on this server, and the state that times its aggregation.</summary>
#pragma warning disable CA1051 // Public fields: the counters are updated with Interlocked, which needs fields.
public sealed class JobCounts(string jobId)
{
    private readonly object _gate = new();
    private long _step = -1;
    private int _pushersStarted;

    public string JobId { get; } = jobId;
    public long Pushes;
    public long RefusedPushes;
    public long Pulls;
    public long PushedBytes;
    public long PulledBytes;
    /// <summary>Last value of the job's NaN/Inf rejection count seen while it was held.</summary>
    public long RejectedGradients;
    public long Version;

    /// <summary>A rank began pushing <paramref name="step"/>; returns true when it is the last of <paramref name="worldSize"/> ranks to do so.</summary>
    public bool PushStarted(long step, int worldSize)
    {
        lock (_gate)
        {
            if (step != _step) (_step, _pushersStarted) = (step, 0);
            return ++_pushersStarted == worldSize;
        }
    }
}
#pragma warning restore CA1051
