using Cluster.Protos;
using Cluster.Shared.Rpc;
using Grpc.Core;

namespace Cluster.Worker.Training;

/// <summary>
/// How a worker asks the coordinator for its leases, one request at a time: on the coordinator's
/// lease port when its assignment names one (<see cref="LeasePortClient"/>: a raw connection,
/// fewer hops a step), otherwise on one LeaseShards stream (coordinator.proto) kept open while
/// the worker trains; either costs both sides less than the unary call a worker would otherwise
/// make every step. A request that fails (no reply before the deadline, a refusal, the
/// coordinator gone) closes its connection or stream, and the next request opens a new one, so
/// <see cref="CoordinatorRetry"/> asks again exactly as it would with LeaseShard (a lease asked
/// again gets the same answer). A lease port that cannot be reached or does not authenticate
/// (filtered, or the coordinator restarted on another port) is left for the stream during
/// <see cref="PortRetryInterval"/>, twice as long after each further failure in a row (at most
/// <see cref="PortRetryIntervalMax"/>: a filtered port costs a connect timeout each time), and
/// the reason is reported.
/// </summary>
public sealed class LeaseStream(Coordinator.CoordinatorClient coordinator, LeasePortClient? port = null,
    Action<string, TimeSpan>? portFallback = null) : IDisposable
{
    /// <summary>How long leases go on the stream after the lease port could not be reached, before it is tried again.</summary>
    public static readonly TimeSpan PortRetryInterval = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan PortRetryIntervalMax = TimeSpan.FromMinutes(8);

    private AsyncDuplexStreamingCall<LeaseShardRequest, LeaseShardReply>? _call;
    private bool _answered; // the open stream has answered before: a failure now is the stream's, not the call's
    private DateTime _portRetryAt = DateTime.MinValue;
    private TimeSpan _portRetryInterval = PortRetryInterval;

    /// <summary>Whether the last lease was answered on the lease port.</summary>
    public bool LastOnPort { get; private set; }

    /// <summary>Sends <paramref name="request"/> and returns its reply; failures are the RpcExceptions LeaseShard would throw.</summary>
    public async Task<LeaseShardReply> LeaseAsync(LeaseShardRequest request, DateTime deadline, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Max(TimeSpan.Zero, deadline - DateTime.UtcNow));
        LastOnPort = port is not null && DateTime.UtcNow >= _portRetryAt;
        if (LastOnPort)
        {
            try
            {
                var reply = await port!.LeaseAsync(request, timeout.Token);
                _portRetryInterval = PortRetryInterval;
                return reply;
            }
            catch (PeerUnreachableException e) when (!cancellationToken.IsCancellationRequested)
            {
                // Not reachable as a lease port: this request and the next ones go on the stream for a while.
                (_portRetryAt, LastOnPort) = (DateTime.UtcNow + _portRetryInterval, false);
                portFallback?.Invoke(e.Message, _portRetryInterval);
                _portRetryInterval = _portRetryInterval * 2 < PortRetryIntervalMax ? _portRetryInterval * 2 : PortRetryIntervalMax;
            }
            catch (Exception e) when (e is not RpcException && !cancellationToken.IsCancellationRequested)
            {
                // A connection that worked and then broke (the coordinator stopped or restarted): reachable again later.
                if (timeout.IsCancellationRequested) throw new RpcException(new Status(StatusCode.DeadlineExceeded, "lease: no reply before the deadline"));
                throw new RpcException(new Status(StatusCode.Unavailable, $"lease port: {e.Message}"));
            }
        }
        return await LeaseOnStreamAsync(request, timeout, cancellationToken);
    }

    private async Task<LeaseShardReply> LeaseOnStreamAsync(LeaseShardRequest request, CancellationTokenSource timeout, CancellationToken cancellationToken)
    {
        if (_call is null) (_call, _answered) = (coordinator.LeaseShards(cancellationToken: cancellationToken), false);
        var call = _call;
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

    public void Dispose()
    {
        Close();
        port?.Dispose();
    }
}
