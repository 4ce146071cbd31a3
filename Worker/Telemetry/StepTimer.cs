using System.Diagnostics;
using Cluster.Protos;
using Cluster.Shared.Telemetry;

namespace Cluster.Worker.Telemetry;

/// <summary>
/// Times the phases of one rank's steps with <see cref="Stopwatch.GetTimestamp"/> and records
/// each as a span, in the phase histograms, and in sums for the next progress report. A step
/// is: compute (forward/backward and copying the gradient out), then push and pull at once:
/// push lasts until every server acknowledged the gradient, wait until every server started
/// sending the next version (the barrier), pull until it has all arrived. No allocation per step.
/// </summary>
public sealed class StepTimer(WorkerTelemetry telemetry, string jobId, int rank)
{
    private long _computeStart, _exchangeStart;
    private long _step;
    private int _timedSteps;
    private long _computeMicros, _pushMicros, _waitMicros, _pullMicros;
    private long _reportStart = Stopwatch.GetTimestamp();

    public void BeginStep(long step)
    {
        _step = step;
        _computeStart = Stopwatch.GetTimestamp();
    }

    /// <summary>The gradient is ready; pushing and pulling start.</summary>
    public void Computed()
    {
        _exchangeStart = Stopwatch.GetTimestamp();
        _computeMicros += Phase(StepPhase.Compute, _computeStart, _exchangeStart);
    }

    /// <summary>The next version has arrived. Timestamps come from the parameter-server clients.</summary>
    public void Exchanged(long pushesDone, long pullsStarted, int bytesPushed, int bytesPulled, int samples)
    {
        long end = Stopwatch.GetTimestamp();
        long pushEnd = Math.Clamp(pushesDone, _exchangeStart, end);
        long pullStart = Math.Clamp(pullsStarted, pushEnd, end);
        _pushMicros += Phase(StepPhase.Push, _exchangeStart, pushEnd);
        _waitMicros += Phase(StepPhase.Wait, pushEnd, pullStart);
        _pullMicros += Phase(StepPhase.Pull, pullStart, end);
        _timedSteps++;
        telemetry.BytesPushed.Increment(bytesPushed);
        telemetry.BytesPulled.Increment(bytesPulled);
        telemetry.Steps.Increment();
        telemetry.Samples.Increment(samples);
    }

    /// <summary>Moves the phase sums since the last report into <paramref name="report"/>.</summary>
    public void Drain(ReportProgressRequest report)
    {
        report.TimedSteps = _timedSteps;
        report.ComputeMicros = _computeMicros;
        report.PushMicros = _pushMicros;
        report.WaitMicros = _waitMicros;
        report.PullMicros = _pullMicros;
        long now = Stopwatch.GetTimestamp();
        double seconds = SpanRecorder.Micros(_reportStart, now) / 1e6;
        if (seconds > 0) telemetry.SamplesPerSecond.Set(report.SampleCount / seconds);
        (_timedSteps, _computeMicros, _pushMicros, _waitMicros, _pullMicros, _reportStart) = (0, 0, 0, 0, 0, now);
    }

    private long Phase(StepPhase phase, long start, long end)
    {
        telemetry.Spans.Record(jobId, rank, _step, phase, start, end);
        long micros = SpanRecorder.Micros(start, end);
        telemetry.PhaseSeconds[(int)phase].Observe(micros / 1e6);
        return micros;
    }
}
