using Cluster.Coordinator.Jobs;
using Cluster.Shared.Telemetry;

namespace Cluster.Coordinator.Telemetry;

/// <summary>The coordinator's Prometheus metrics: membership, queue, jobs, RPCs, heartbeats, progress.</summary>
public sealed class CoordinatorMetrics
{
    private static readonly string[] WorkerStates = ["idle", "training", "dead"];
    private readonly Counter _rpcs;

    public CoordinatorMetrics(JobBoard board, TimeProvider time)
    {
        _rpcs = Metrics.Counter("cluster_coordinator_rpcs_total", "gRPC calls answered, by method and status code", "method", "code");
        Heartbeats = Metrics.Counter("cluster_coordinator_heartbeats_total", "Worker heartbeats received").WithLabels();
        ProgressReports = Metrics.Counter("cluster_coordinator_progress_reports_total", "Progress reports received from workers").WithLabels();
        ReportedSteps = Metrics.Counter("cluster_coordinator_reported_steps_total", "Training steps reported by workers (summed over ranks)").WithLabels();
        ReportedSamples = Metrics.Counter("cluster_coordinator_reported_samples_total", "Training samples reported by workers").WithLabels();
        var workers = Metrics.Gauge("cluster_workers", "Registered workers by state (idle, training, dead)", "state");
        var servers = Metrics.Gauge("cluster_parameter_servers", "Registered parameter servers");
        var jobs = Metrics.Gauge("cluster_jobs", "Jobs by state", "state");
        var queue = Metrics.Gauge("cluster_job_queue_depth", "Jobs waiting in the queue for idle workers");
        var samplesPerSecond = Metrics.Gauge("cluster_job_samples_per_second", "Training throughput of each running job over its current epoch", "job");
        var epoch = Metrics.Gauge("cluster_job_epoch", "0-based epoch of each running job", "job");
        var heartbeatAge = Metrics.Gauge("cluster_worker_heartbeat_age_seconds", "Seconds since each live worker's last heartbeat", "worker");
        Metrics.BeforeScrape(() => board.Read((all, members) =>
        {
            var now = time.GetUtcNow();
            foreach (string state in WorkerStates) workers.WithLabels(state).Set(0);
            heartbeatAge.Clear();
            foreach (var worker in members.Workers)
            {
                var child = workers.WithLabels(!worker.Alive ? "dead" : worker.JobId is null ? "idle" : "training");
                child.Set(child.Value + 1);
                if (worker.Alive) heartbeatAge.WithLabels(worker.Id).Set((now - worker.LastHeartbeat).TotalSeconds);
            }
            servers.WithLabels().Set(members.Servers.Count);
            foreach (var state in Enum.GetValues<JobState>()) jobs.WithLabels(state.ToString().ToLowerInvariant()).Set(all.Values.Count(j => j.State == state));
            queue.WithLabels().Set(all.Values.Count(j => j.State == JobState.Queued));
            samplesPerSecond.Clear();
            epoch.Clear();
            foreach (var job in all.Values.Where(j => j.State == JobState.Running))
            {
                if (job.Live(now) is not { } live) continue;
                samplesPerSecond.WithLabels(job.Id).Set(live.SamplesPerSecond);
                epoch.WithLabels(job.Id).Set(live.Epoch);
            }
            return 0;
        }));
    }

    public MetricRegistry Metrics { get; } = new();
    public CounterChild Heartbeats { get; }
    public CounterChild ProgressReports { get; }
    public CounterChild ReportedSteps { get; }
    public CounterChild ReportedSamples { get; }

    public void Rpc(string method, string code) => _rpcs.WithLabels(method, code).Increment();
}
