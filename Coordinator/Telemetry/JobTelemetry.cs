using System.Collections.Concurrent;
using Cluster.Protos;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// What workers report about a job's steps beyond progress: per-rank phase times (compute,
/// push, wait, pull) and the training loss over time. Fed by the progress reports.
/// </summary>
public sealed class JobTelemetry
{
    /// <summary>Most loss points kept per job; past it, every other point is dropped (the curve keeps its shape).</summary>
    public const int LossPointsMax = 4000;

    private readonly object _gate = new();
    private readonly Dictionary<int, RankTimes> _ranks = [];
    private readonly List<LossPoint> _loss = [];
    private DateTimeOffset? _firstReport;

    public void Record(ReportProgressRequest report, DateTimeOffset now)
    {
        lock (_gate)
        {
            _firstReport ??= now;
            if (!_ranks.TryGetValue(report.Rank, out var times)) _ranks[report.Rank] = times = new RankTimes();
            if (report.TimedSteps > 0)
            {
                times.Steps += report.TimedSteps;
                times.ComputeMicros += report.ComputeMicros;
                times.PushMicros += report.PushMicros;
                times.WaitMicros += report.WaitMicros;
                times.PullMicros += report.PullMicros;
            }
            if (report.SampleCount > 0 && report.StepsTotal > 0)
            {
                double epoch = report.Epoch + (double)report.StepsDone / report.StepsTotal;
                _loss.Add(new LossPoint(epoch, report.LossSum / report.SampleCount, report.Rank, (now - _firstReport.Value).TotalSeconds));
                if (_loss.Count > LossPointsMax) Decimate();
            }
        }
    }

    /// <summary>Per-rank mean step phases, the slowest rank, and the loss curve.</summary>
    public (IReadOnlyList<RankPhases> Ranks, int? SlowestRank, IReadOnlyList<LossPoint> Loss) Snapshot()
    {
        lock (_gate)
        {
            var ranks = _ranks.OrderBy(r => r.Key).Where(r => r.Value.Steps > 0).Select(r => r.Value.Mean(r.Key)).ToList();
            return (ranks, SlowestRank(ranks), [.. _loss]);
        }
    }

    /// <summary>
    /// The rank that holds the others back: the most time per step spent on its own work
    /// (compute, push, pull), i.e. not waiting at the barrier. Under BSP every rank's step takes
    /// as long as the slowest's, so total step time cannot tell them apart; wait time can.
    /// </summary>
    public static int? SlowestRank(IReadOnlyList<RankPhases> ranks) =>
        ranks.Count < 2 ? null : ranks.MaxBy(r => r.BusyMillis)!.Rank;

    private void Decimate()
    {
        for (int i = _loss.Count - 1; i > 0; i -= 2) _loss.RemoveAt(i - 1);
    }

    private sealed class RankTimes
    {
        public long Steps, ComputeMicros, PushMicros, WaitMicros, PullMicros;

        public RankPhases Mean(int rank) => new(
            rank, Steps, ComputeMicros / 1000.0 / Steps, PushMicros / 1000.0 / Steps, WaitMicros / 1000.0 / Steps, PullMicros / 1000.0 / Steps);
    }
}

/// <summary>One rank's mean time per step in each phase, in milliseconds.</summary>
public sealed record RankPhases(int Rank, long Steps, double ComputeMillis, double PushMillis, double WaitMillis, double PullMillis)
{
    /// <summary>Time per step not spent waiting for the other ranks.</summary>
    public double BusyMillis => ComputeMillis + PushMillis + PullMillis;
    public double StepMillis => BusyMillis + WaitMillis;
}

/// <summary>A point of the training-loss curve: fractional epoch, mean loss of the samples since the rank's last report.</summary>
public sealed record LossPoint(double Epoch, double Loss, int Rank, double Seconds);

/// <summary>Every job's <see cref="JobTelemetry"/>, by job id.</summary>
public sealed class JobTelemetryStore
{
    private readonly ConcurrentDictionary<string, JobTelemetry> _jobs = new();

    public JobTelemetry For(string jobId) => _jobs.GetOrAdd(jobId, _ => new JobTelemetry());

    public JobTelemetry? Find(string jobId) => _jobs.GetValueOrDefault(jobId);
}
