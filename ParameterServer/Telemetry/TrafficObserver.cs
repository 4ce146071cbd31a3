using System.Diagnostics;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Telemetry;

namespace Cluster.ParameterServer.Telemetry;

/// <summary>
/// Counts and times pushes and pulls, whichever transport carried them (the gRPC interceptor
/// and the data port both report here). Spans: push = a rank's gradient stream from header to
/// reply; aggregate = from the moment every rank is pushing step t until version t + 1 is
/// published; wait = a pull from its request to its first chunk; pull = from the first chunk to the last.
/// </summary>
public sealed class TrafficObserver(ParameterServerTelemetry telemetry, ParameterStore store)
{
    private static readonly TimeSpan AggregationWaitMax = TimeSpan.FromMinutes(5);
    private ParameterServerTelemetry Telemetry => telemetry;

    /// <summary>A push's header has arrived.</summary>
    public Push PushStarted(PushHeader header)
    {
        long start = Stopwatch.GetTimestamp();
        if (store.Find(header.JobId) is { } job && telemetry.Job(header.JobId).PushStarted(header.Step, job.WorldSize))
            _ = TimeAggregationAsync(job, header.Rank, header.Step, start);
        return new Push(this, header, start);
    }

    /// <summary>A push was refused (its header may not have arrived: <paramref name="push"/> null).</summary>
    public void Refused(Push? push)
    {
        telemetry.PushesRefused.Increment();
        if (push is null) return;
        var counts = telemetry.Job(push.Header.JobId);
        Interlocked.Increment(ref counts.RefusedPushes);
        Remember(counts);
    }

    /// <summary>A pull completed: from its request (<paramref name="start"/>) through its first chunk to now.</summary>
    public void Pulled(PullRequest pull, long start, long firstChunkTimestamp, long bytes)
    {
        long end = Stopwatch.GetTimestamp();
        long firstChunk = firstChunkTimestamp == 0 ? end : firstChunkTimestamp;
        // A pull names no rank: its spans go to the server's pull track (rank -1), at the step that produced the version.
        telemetry.Phase(pull.JobId, -1, pull.MinVersion - 1, StepPhase.Wait, start, firstChunk);
        telemetry.Phase(pull.JobId, -1, pull.MinVersion - 1, StepPhase.Pull, firstChunk, end);
        telemetry.Pulls.Increment();
        telemetry.BytesPulled.Increment(bytes);
        var counts = telemetry.Job(pull.JobId);
        Interlocked.Increment(ref counts.Pulls);
        Interlocked.Add(ref counts.PulledBytes, bytes);
    }

    /// <summary>Aggregate span of a step: from the moment every rank is pushing it until its version is published.</summary>
    private async Task TimeAggregationAsync(JobParameters job, int rank, long step, long allPushing)
    {
        try
        {
            using var timeout = new CancellationTokenSource(AggregationWaitMax);
            await job.WaitForVersionAsync(step + 1, timeout.Token);
            telemetry.Phase(job.JobId, rank, step, StepPhase.Aggregate, allPushing, Stopwatch.GetTimestamp());
        }
        catch (OperationCanceledException)
        {
            // The step never completed (a rank failed, the job was released): no span.
        }
    }

    private void Remember(JobCounts counts)
    {
        if (store.Find(counts.JobId) is not { } job) return;
        Volatile.Write(ref counts.RejectedGradients, job.RejectedGradients);
        Volatile.Write(ref counts.Version, job.Version);
    }

    /// <summary>One push in flight.</summary>
    public sealed class Push(TrafficObserver owner, PushHeader header, long start)
    {
        public PushHeader Header { get; } = header;

        /// <summary>The push was answered; <paramref name="bytes"/> of chunk data and indices arrived.</summary>
        public void Completed(long bytes)
        {
            long end = Stopwatch.GetTimestamp();
            var (telemetry, counts) = (owner.Telemetry, owner.Telemetry.Job(Header.JobId));
            telemetry.Phase(Header.JobId, Header.Rank, Header.Step, StepPhase.Push, start, end);
            telemetry.PushesAccepted.Increment();
            telemetry.BytesPushed.Increment(bytes);
            Interlocked.Increment(ref counts.Pushes);
            Interlocked.Add(ref counts.PushedBytes, bytes);
            owner.Remember(counts);
        }
    }
}
