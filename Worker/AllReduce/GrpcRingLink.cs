using System.Threading.Channels;
using Cluster.Protos;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// One generation's <see cref="IRingLink"/> over gRPC: a client stream to the successor, fed by
/// a writer task from a bounded queue (so receiving, adding and sending overlap), and the
/// predecessor's stream taken from the <see cref="PeerInbox"/>. Any failure breaks the link;
/// disposing it cancels both calls so that the break travels on around the ring.
/// </summary>
public sealed class GrpcRingLink : IRingLink, IAsyncDisposable
{
    private const int QueuedSegmentsMax = 64;
    private readonly Channel<RingMessage> _outgoing = Channel.CreateBounded<RingMessage>(new BoundedChannelOptions(QueuedSegmentsMax) { SingleReader = true, SingleWriter = true });
    private readonly CancellationTokenSource _broken = new();
    private readonly AsyncClientStreamingCall<RingMessage, RingStreamReply> _call;
    private readonly Task _writer;
    private readonly IAsyncStreamReader<RingMessage> _incoming;
    private readonly PeerInbox _inbox;
    private readonly string _jobId;
    private readonly long _generation;
    private readonly TimeSpan _peerTimeout;
    private Exception? _failure;

    private GrpcRingLink(PeerInbox inbox, string jobId, long generation, AsyncClientStreamingCall<RingMessage, RingStreamReply> call,
        IAsyncStreamReader<RingMessage> incoming, TimeSpan peerTimeout, string successor)
    {
        (_inbox, _jobId, _generation, _call, _incoming, _peerTimeout) = (inbox, jobId, generation, call, incoming, peerTimeout);
        _writer = WriteLoopAsync(successor);
    }

    /// <summary>Opens the stream to the successor and waits (up to the peer timeout) for the predecessor's.</summary>
    public static async Task<GrpcRingLink> OpenAsync(PeerInbox inbox, GrpcChannel successor, string successorAddress, string jobId, long generation,
        int rank, int predecessorRank, TimeSpan peerTimeout, CancellationToken cancellationToken)
    {
        var call = new RingPeer.RingPeerClient(successor).Stream(cancellationToken: cancellationToken);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(peerTimeout);
            await call.RequestStream.WriteAsync(new RingMessage { Hello = new RingHello { JobId = jobId, Generation = generation, FromRank = rank } }, timeout.Token);
            var incoming = await inbox.AcceptAsync(jobId, generation, predecessorRank, timeout.Token);
            return new GrpcRingLink(inbox, jobId, generation, call, incoming, peerTimeout, successorAddress);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
        {
            call.Dispose();
            inbox.Release(jobId, generation);
            throw new RingBrokenException($"ring generation {generation}: could not connect to successor {successorAddress} or predecessor rank {predecessorRank} within {peerTimeout.TotalSeconds:0.#} s ({e.Message})", e);
        }
    }

    public async ValueTask SendAsync(RingSegment segment, CancellationToken cancellationToken)
    {
        ThrowIfBroken();
        var message = new RingMessage { Segment = segment };
        if (_outgoing.Writer.TryWrite(message)) return;
        using var either = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _broken.Token);
        try
        {
            await _outgoing.Writer.WriteAsync(message, either.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw;
        }
    }

    public async ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken)
    {
        ThrowIfBroken();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _broken.Token);
        timeout.CancelAfter(_peerTimeout);
        try
        {
            if (!await _incoming.MoveNext(timeout.Token))
                throw new RingBrokenException($"ring generation {_generation}: the predecessor ended its stream");
            return _incoming.Current.Segment ?? throw new RingBrokenException($"ring generation {_generation}: the predecessor sent a {_incoming.Current.BodyCase} mid-stream");
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException or IOException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw Break(new RingBrokenException(
                _broken.IsCancellationRequested || e is not OperationCanceledException
                    ? $"ring generation {_generation}: the predecessor's stream failed ({e.Message})"
                    : $"ring generation {_generation}: nothing from the predecessor for {_peerTimeout.TotalSeconds:0.#} s", e));
        }
    }

    private async Task WriteLoopAsync(string successor)
    {
        try
        {
            await foreach (var message in _outgoing.Reader.ReadAllAsync(_broken.Token))
                await _call.RequestStream.WriteAsync(message, _broken.Token);
        }
        catch (Exception e) when (!_broken.IsCancellationRequested)
        {
            Break(new RingBrokenException($"ring generation {_generation}: sending to the successor {successor} failed ({e.Message})", e));
        }
        catch (Exception)
        {
            // Broken on purpose (dispose or the receive side failed).
        }
    }

    /// <summary>Marks the link broken (so that disposing it does not wait for the successor).</summary>
    public void Abort(string reason) => Break(new RingBrokenException($"ring generation {_generation}: {reason}"));

    private RingBrokenException Break(RingBrokenException failure)
    {
        Interlocked.CompareExchange(ref _failure, failure, null);
        _broken.Cancel();
        return failure;
    }

    private void ThrowIfBroken()
    {
        if (_failure is not null) throw new RingBrokenException(_failure.Message, _failure);
    }

    /// <summary>
    /// Leaves the generation. After a completed collective the leave is graceful: the incoming
    /// call is released as a success (everything needed was read), the queued segments are
    /// flushed and the stream completed, and the successor is given up to <see cref="CloseTimeout"/>
    /// to read them before the call is cancelled. A broken link is cancelled at once.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        _outgoing.Writer.TryComplete();
        bool graceful = _failure is null;
        _inbox.Release(_jobId, _generation, graceful);
        if (graceful)
        {
            try
            {
                await _writer.WaitAsync(CloseTimeout);
                await _call.RequestStream.CompleteAsync().WaitAsync(CloseTimeout);
                await _call.ResponseAsync.WaitAsync(CloseTimeout);
            }
            catch (Exception e) when (e is RpcException or TimeoutException or InvalidOperationException or OperationCanceledException)
            {
                // The successor left first or is gone: nothing more to deliver.
            }
        }
        if (!_broken.IsCancellationRequested) await _broken.CancelAsync();
        try { await _writer; } catch (OperationCanceledException) { }
        _call.Dispose();
        _broken.Dispose();
    }

    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(10);
}
