using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Cluster.Coordinator.Telemetry;
using Cluster.Protos;
using Cluster.Shared.Telemetry;

namespace Cluster.Tests.Unit.Telemetry;

[Trait("Tier", "unit")]
public sealed class StepTelemetryTests
{
    private static readonly DateTimeOffset Start = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    [Fact]
    public void The_slowest_rank_is_the_one_that_waits_least_not_the_one_with_the_longest_step()
    {
        var telemetry = new JobTelemetry();
        // BSP: both ranks' steps take about 60 ms; rank 0 computes 10 ms and waits 45, rank 1 computes 50 and waits 5.
        telemetry.Record(Report(rank: 0, steps: 10, compute: 10, push: 3, wait: 45, pull: 2), Start);
        telemetry.Record(Report(rank: 1, steps: 10, compute: 50, push: 3, wait: 5, pull: 2), Start);

        var (ranks, slowest, _) = telemetry.Snapshot();

        Assert.Equal(1, slowest);
        Assert.Equal(50, ranks[1].ComputeMillis, 6);
        Assert.Equal(55, ranks[1].BusyMillis, 6);
        Assert.Equal(60, ranks[0].StepMillis, 6);
    }

    [Fact]
    public void One_rank_has_no_slowest_and_phase_means_add_up_over_reports()
    {
        var telemetry = new JobTelemetry();
        telemetry.Record(Report(rank: 0, steps: 2, compute: 10, push: 1, wait: 0, pull: 1), Start);
        telemetry.Record(Report(rank: 0, steps: 6, compute: 20, push: 1, wait: 0, pull: 1), Start.AddSeconds(1));

        var (ranks, slowest, loss) = telemetry.Snapshot();

        Assert.Null(slowest);
        Assert.Equal(8, ranks[0].Steps);
        Assert.Equal((2 * 10 + 6 * 20) / 8.0, ranks[0].ComputeMillis, 6);
        Assert.Equal(2, loss.Count);
        Assert.Equal(1.0, loss[1].Seconds, 6);
    }

    [Fact]
    public void The_loss_curve_is_thinned_to_a_bounded_number_of_points_keeping_the_newest()
    {
        var telemetry = new JobTelemetry();
        for (int i = 0; i < JobTelemetry.LossPointsMax * 3; i++)
            telemetry.Record(new ReportProgressRequest { Rank = 0, Epoch = 0, StepsDone = i + 1, StepsTotal = JobTelemetry.LossPointsMax * 3, LossSum = i, SampleCount = 1 }, Start);

        var (_, _, loss) = telemetry.Snapshot();

        Assert.InRange(loss.Count, JobTelemetry.LossPointsMax / 2, JobTelemetry.LossPointsMax);
        Assert.Equal(JobTelemetry.LossPointsMax * 3 - 1, loss[^1].Loss);
        Assert.True(loss.Zip(loss.Skip(1)).All(p => p.First.Epoch < p.Second.Epoch));
    }

    [Fact]
    public void Spans_are_written_as_chrome_trace_events_with_named_processes_and_tracks()
    {
        var recorder = new SpanRecorder(capacity: 4);
        long t0 = Stopwatch.GetTimestamp();
        long t1 = t0 + Stopwatch.Frequency / 1000 * 5;
        recorder.Record("job-1", 0, 7, StepPhase.Compute, t0, t1);
        recorder.Record("job-2", 0, 1, StepPhase.Pull, t0, t1);
        recorder.Record("job-1", 1, 7, StepPhase.Aggregate, t0, t1);

        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream)) ChromeTrace.Write(json, "worker A", recorder.Snapshot("job-1"), perRankTracks: true);
        using var trace = JsonDocument.Parse(Encoding.UTF8.GetString(stream.ToArray()));

        var events = trace.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        var spans = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.Equal(["compute", "aggregate"], spans.Select(s => s.GetProperty("name").GetString()));
        Assert.All(spans, s => Assert.Equal(5000, s.GetProperty("dur").GetInt64(), 1.0));
        Assert.Equal(7, spans[0].GetProperty("args").GetProperty("step").GetInt64());
        Assert.Equal(ChromeTrace.AggregateTrack, spans[1].GetProperty("tid").GetInt32());
        Assert.Contains(events, e => e.GetProperty("name").GetString() == "process_name" && e.GetProperty("args").GetProperty("name").GetString() == "worker A");
    }

    [Fact]
    public void The_span_ring_keeps_the_newest_spans()
    {
        var recorder = new SpanRecorder(capacity: 3);
        long now = Stopwatch.GetTimestamp();
        for (int step = 0; step < 5; step++) recorder.Record("job", 0, step, StepPhase.Compute, now, now);

        Assert.Equal([2L, 3L, 4L], recorder.Snapshot(null).Select(s => s.Step));
    }

    private static ReportProgressRequest Report(int rank, int steps, double compute, double push, double wait, double pull) => new()
    {
        JobId = "job-1", Rank = rank, Epoch = 0, StepsDone = steps, StepsTotal = 100, LossSum = 2.3 * 64 * steps, SampleCount = 64 * steps,
        TimedSteps = steps,
        ComputeMicros = (long)(compute * 1000 * steps), PushMicros = (long)(push * 1000 * steps),
        WaitMicros = (long)(wait * 1000 * steps), PullMicros = (long)(pull * 1000 * steps),
    };
}
