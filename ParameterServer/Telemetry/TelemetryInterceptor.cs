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
    private readonly TrafficObserver _observer = new(telemetry, store);

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (requestStream is not IAsyncStreamReader<PushMessage> pushes) return await continuation(requestStream, context);
        var reader = new PushReader(pushes, _observer);
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
        _observer.Pulled(pull, observed.Start, observed.FirstChunkTimestamp, observed.Bytes);
    }

    private sealed class PushReader(IAsyncStreamReader<PushMessage> inner, TrafficObserver observer) : IAsyncStreamReader<PushMessage>
    {
        private TrafficObserver.Push? _push;
        private long _bytes;

        public PushMessage Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (!await inner.MoveNext(cancellationToken)) return false;
            var message = inner.Current;
            if (message.BodyCase == PushMessage.BodyOneofCase.Header && _push is null)
                _push = observer.PushStarted(message.Header);
            else if (message.BodyCase == PushMessage.BodyOneofCase.Chunk)
                _bytes += message.Chunk.Data.Length + message.Chunk.Indices.Length;
            return true;
        }

        public void Completed() => _push?.Completed(_bytes);

        public void Refused() => observer.Refused(_push);
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
