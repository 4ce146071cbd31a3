using System.Diagnostics;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Telemetry;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Cluster.ParameterServer.Telemetry;

/// <summary>
/// Observes the data plane from outside the service: wraps the push request stream and the
/// pull response stream to count bytes and time the server's side of each step, so that the
/// service and the aggregation stay free of telemetry code. Spans:
/// push = a rank's gradient stream from header to reply; aggregate = from the moment every
/// rank is pushing step t until version t + 1 is published (partitions are averaged and
/// stepped as they arrive, so this is where that work happens); wait = a pull from its
/// request to its first chunk; pull = from the first chunk to the last.
/// </summary>
public sealed class TelemetryInterceptor(ParameterServerTelemetry telemetry, ParameterStore store) : Interceptor
{
    private readonly ParameterServerTelemetry _telemetry = telemetry;
    private readonly ParameterStore _store = store;

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (requestStream is not IAsyncStreamReader<PushMessage> pushes) return await continuation(requestStream, context);
        var reader = new PushReader(pushes, this);
        try
        {
            var response = await continuation((IAsyncStreamReader<TRequest>)(object)reader, context);
            reader.Completed();
            return response;
        }
        catch (RpcException)
        {
            reader.Refused();
            throw;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (request is not PullRequest pull || responseStream is not IServerStreamWriter<PullMessage> writer)
        {
            await continuation(request, responseStream, context);
            return;
        }
        var observed = new PullWriter(writer, Stopwatch.GetTimestamp());
        await continuation(request, (IServerStreamWriter<TResponse>)(object)observed, context);
        long end = Stopwatch.GetTimestamp();
        long firstChunk = observed.FirstChunkTimestamp == 0 ? end : observed.FirstChunkTimestamp;
        // A pull names no rank: its spans go to the server's pull track (rank -1), at the step that produced the version.
        _telemetry.Phase(pull.JobId, -1, pull.MinVersion - 1, StepPhase.Wait, observed.Start, firstChunk);
        _telemetry.Phase(pull.JobId, -1, pull.MinVersion - 1, StepPhase.Pull, firstChunk, end);
        _telemetry.Pulls.Increment();
        _telemetry.BytesPulled.Increment(observed.Bytes);
        var counts = _telemetry.Job(pull.JobId);
        Interlocked.Increment(ref counts.Pulls);
        Interlocked.Add(ref counts.PulledBytes, observed.Bytes);
    }

    /// <summary>Aggregate span of a step: from the moment every rank is pushing it until its version is published.</summary>
    private async Task TimeAggregationAsync(JobParameters job, int rank, long step, long allPushing)
    {
        try
        {
            using var timeout = new CancellationTokenSource(AggregationWaitMax);
            await job.WaitForVersionAsync(step + 1, timeout.Token);
            _telemetry.Phase(job.JobId, rank, step, StepPhase.Aggregate, allPushing, Stopwatch.GetTimestamp());
        }
        catch (OperationCanceledException)
        {
            // The step never completed (a rank failed, the job was released): no span.
        }
    }

    private static readonly TimeSpan AggregationWaitMax = TimeSpan.FromMinutes(5);

    private sealed class PushReader(IAsyncStreamReader<PushMessage> inner, TelemetryInterceptor owner) : IAsyncStreamReader<PushMessage>
    {
        private PushHeader? _header;
        private long _start;
        private long _bytes;

        public PushMessage Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (!await inner.MoveNext(cancellationToken)) return false;
            var message = inner.Current;
            if (message.BodyCase == PushMessage.BodyOneofCase.Header && _header is null)
            {
                _header = message.Header;
                _start = Stopwatch.GetTimestamp();
                if (owner._store.Find(_header.JobId) is { } job && owner._telemetry.Job(_header.JobId).PushStarted(_header.Step, job.WorldSize))
                    _ = owner.TimeAggregationAsync(job, _header.Rank, _header.Step, _start);
            }
            else if (message.BodyCase == PushMessage.BodyOneofCase.Chunk)
            {
                _bytes += message.Chunk.Data.Length + message.Chunk.Indices.Length;
            }
            return true;
        }

        public void Completed()
        {
            if (_header is null) return;
            long end = Stopwatch.GetTimestamp();
            var (telemetry, counts) = (owner._telemetry, owner._telemetry.Job(_header.JobId));
            telemetry.Phase(_header.JobId, _header.Rank, _header.Step, StepPhase.Push, _start, end);
            telemetry.PushesAccepted.Increment();
            telemetry.BytesPushed.Increment(_bytes);
            Interlocked.Increment(ref counts.Pushes);
            Interlocked.Add(ref counts.PushedBytes, _bytes);
            Remember(counts);
        }

        public void Refused()
        {
            owner._telemetry.PushesRefused.Increment();
            if (_header is null) return;
            var counts = owner._telemetry.Job(_header.JobId);
            Interlocked.Increment(ref counts.RefusedPushes);
            Remember(counts);
        }

        private void Remember(JobCounts counts)
        {
            if (owner._store.Find(counts.JobId) is not { } job) return;
            Volatile.Write(ref counts.RejectedGradients, job.RejectedGradients);
            Volatile.Write(ref counts.Version, job.Version);
        }
    }

    private sealed class PullWriter(IServerStreamWriter<PullMessage> inner, long start) : IServerStreamWriter<PullMessage>
    {
        public long Start { get; } = start;
        public long FirstChunkTimestamp { get; private set; }
        public long Bytes { get; private set; }

        public WriteOptions? WriteOptions { get => inner.WriteOptions; set => inner.WriteOptions = value; }

        public Task WriteAsync(PullMessage message)
        {
            if (message.BodyCase == PullMessage.BodyOneofCase.Chunk)
            {
                if (FirstChunkTimestamp == 0) FirstChunkTimestamp = Stopwatch.GetTimestamp();
                Bytes += message.Chunk.Data.Length;
            }
            return inner.WriteAsync(message);
        }
    }
}
