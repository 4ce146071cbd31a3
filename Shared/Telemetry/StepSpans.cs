using System.Diagnostics;
using System.Text.Json;

namespace Cluster.Shared.Telemetry;

/// <summary>The phases of a training step, as the timeline and the metrics name them.</summary>
public enum StepPhase : byte { Compute, Push, Wait, Pull, Aggregate }

/// <summary>One phase of one step on one rank, in microseconds since the Unix epoch.</summary>
public readonly record struct StepSpan(string JobId, int Rank, long Step, StepPhase Phase, long StartMicros, long DurationMicros);

/// <summary>
/// The newest <see cref="Capacity"/> step spans of a process, for the timeline. Recording
/// stores a struct in a preallocated ring: no allocation per step.
/// </summary>
public sealed class SpanRecorder(int capacity = SpanRecorder.DefaultCapacity)
{
    public const int DefaultCapacity = 1 << 17;

    private static readonly long UnixMicrosAtStart = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() * 1000;
    private static readonly long TimestampAtStart = Stopwatch.GetTimestamp();

    private readonly StepSpan[] _ring = new StepSpan[capacity];
    private readonly object _gate = new();
    private long _written;

    public int Capacity => _ring.Length;

    public static string PhaseName(StepPhase phase) => phase switch
    {
        StepPhase.Compute => "compute",
        StepPhase.Push => "push",
        StepPhase.Wait => "wait",
        StepPhase.Pull => "pull",
        _ => "aggregate",
    };

    /// <summary>Microseconds since the Unix epoch of a <see cref="Stopwatch.GetTimestamp"/> value.</summary>
    public static long UnixMicros(long timestamp) =>
        UnixMicrosAtStart + (long)((timestamp - TimestampAtStart) * (1_000_000.0 / Stopwatch.Frequency));

    public static long Micros(long fromTimestamp, long toTimestamp) =>
        (long)((toTimestamp - fromTimestamp) * (1_000_000.0 / Stopwatch.Frequency));

    /// <summary>Records a phase that ran from one <see cref="Stopwatch.GetTimestamp"/> value to another.</summary>
    public void Record(string jobId, int rank, long step, StepPhase phase, long startTimestamp, long endTimestamp)
    {
        var span = new StepSpan(jobId, rank, step, phase, UnixMicros(startTimestamp), Math.Max(0, Micros(startTimestamp, endTimestamp)));
        lock (_gate) _ring[_written++ % _ring.Length] = span;
    }

    /// <summary>The recorded spans of a job (all jobs when null), oldest first.</summary>
    public List<StepSpan> Snapshot(string? jobId)
    {
        lock (_gate)
        {
            long count = Math.Min(_written, _ring.Length);
            var spans = new List<StepSpan>((int)count);
            for (long i = _written - count; i < _written; i++)
            {
                var span = _ring[i % _ring.Length];
                if (jobId is null || span.JobId == jobId) spans.Add(span);
            }
            return spans;
        }
    }
}

/// <summary>
/// Writes spans as Chrome trace JSON (the "Trace Event Format" that Perfetto and
/// chrome://tracing open): one complete event ("ph": "X") per span, a process per role and
/// a thread (track) per rank, named by metadata events.
/// </summary>
public static class ChromeTrace
{
    /// <summary>Track of the optimizer on a parameter server (its spans belong to no rank).</summary>
    public const int AggregateTrack = 1000;

    public static void Write(Utf8JsonWriter json, string processName, IReadOnlyList<StepSpan> spans, bool perRankTracks)
    {
        json.WriteStartObject();
        json.WriteString("displayTimeUnit", "ms");
        json.WritePropertyName("traceEvents");
        json.WriteStartArray();
        WriteEvents(json, pid: 1, processName, spans, perRankTracks);
        json.WriteEndArray();
        json.WriteEndObject();
    }

    /// <summary>The events only, for merging several roles into one trace.</summary>
    public static void WriteEvents(Utf8JsonWriter json, int pid, string processName, IReadOnlyList<StepSpan> spans, bool perRankTracks)
    {
        Metadata(json, "process_name", pid, 0, processName);
        foreach (int track in spans.Select(s => Track(s, perRankTracks)).Distinct().Order())
            Metadata(json, "thread_name", pid, track, track == AggregateTrack ? "aggregate" : track < 0 ? "pulls (all ranks)" : $"rank {track}");
        foreach (var span in spans)
        {
            json.WriteStartObject();
            json.WriteString("name", SpanRecorder.PhaseName(span.Phase));
            json.WriteString("cat", "step");
            json.WriteString("ph", "X");
            json.WriteNumber("ts", span.StartMicros);
            json.WriteNumber("dur", span.DurationMicros);
            json.WriteNumber("pid", pid);
            json.WriteNumber("tid", Track(span, perRankTracks));
            json.WriteStartObject("args");
            json.WriteString("job", span.JobId);
            json.WriteNumber("rank", span.Rank);
            json.WriteNumber("step", span.Step);
            json.WriteEndObject();
            json.WriteEndObject();
        }
    }

    private static int Track(StepSpan span, bool perRankTracks) =>
        span.Phase == StepPhase.Aggregate ? AggregateTrack : perRankTracks ? span.Rank : 0;

    private static void Metadata(Utf8JsonWriter json, string name, int pid, int tid, string value)
    {
        json.WriteStartObject();
        json.WriteString("name", name);
        json.WriteString("ph", "M");
        json.WriteNumber("pid", pid);
        json.WriteNumber("tid", tid);
        json.WriteStartObject("args");
        json.WriteString("name", value);
        json.WriteEndObject();
        json.WriteEndObject();
    }
}
