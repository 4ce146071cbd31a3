using Cluster.Protos;
using Grpc.Core;

namespace Cluster.Worker.Training;

/// <summary>
/// A worker's end of LeaseShards (coordinator.proto): one stream, kept open while the worker
/// trains a job, carries its lease requests and their replies, one at a time; a message on an
/// open stream costs both sides less than a unary call, which a worker would otherwise make
/// every step. A request that fails (no reply before the deadline, a refusal, the coordinator
/// gone) ends the stream, and the next request opens a new one, so <see cref="CoordinatorRetry"/>
/// asks again exactly as it would with LeaseShard (a lease asked again gets the same answer).
/// </summary>
public sealed class LeaseStream(Coordinator.CoordinatorClient coordinator) : IDisposable
{
    private AsyncDuplexStreamingCall<LeaseShardRequest, LeaseShardReply>? _call;
    private bool _answered; // the open stream has answered before: a failure now is the stream's, not the call's

    /// <summary>Sends <paramref name="request"/> and returns its reply; failures are the RpcExceptions LeaseShard would throw.</summary>
    public async Task<LeaseShardReply> LeaseAsync(LeaseShardRequest request, DateTime deadline, CancellationToken cancellationToken)
    {
        if (_call is null) (_call, _answered) = (coordinator.LeaseShards(cancellationToken: cancellationToken), false);
        var call = _call;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Max(TimeSpan.Zero, deadline - DateTime.UtcNow));
        try
        {
            await call.RequestStream.WriteAsync(request, timeout.Token);
            if (!await call.ResponseStream.MoveNext(timeout.Token))
                throw new RpcException(new Status(StatusCode.Unavailable, "lease stream: the coordinator ended it"));
            _answered = true;
            return call.ResponseStream.Current;
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            bool wasAnswering = _answered;
            Close();
            if (timeout.IsCancellationRequested)
                throw new RpcException(new Status(StatusCode.DeadlineExceeded, "lease: no reply before the deadline"));
            // The handler's own answer (a refusal), or what a new call meets (unreachable, refused secret): as LeaseShard would throw.
            if (e is RpcException rpc && !(wasAnswering && rpc.StatusCode is StatusCode.Internal or StatusCode.Cancelled or StatusCode.Unknown))
                throw;
            // A stream that worked and then broke or was ended (the coordinator stopped or restarted): reachable again later.
            throw new RpcException(new Status(StatusCode.Unavailable, $"lease stream: {e.Message}"));
        }
        catch
        {
            Close();
            throw;
        }
    }

    private void Close()
    {
        _call?.Dispose();
        _call = null;
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    public void Dispose() => Close();
}
