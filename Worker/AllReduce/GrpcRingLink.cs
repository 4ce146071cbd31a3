using System.Threading.Channels;
using Cluster.Protos;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// One generation's <see cref="IRingLink"/> over gRPC. Incoming: this member's Stream call to its
/// predecessor (server streaming). Outgoing: the successor's Stream call to this member, taken
/// from the <see cref="PeerInbox"/> and fed by a writer task from a bounded queue, so that
/// receiving, adding and sending overlap. Any failure breaks the link; disposing a broken link
/// cancels both calls so that the break travels on around the ring.
/// </summary>
public sealed class GrpcRingLink : RingLinkBase
{
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(10);
    private readonly AsyncServerStreamingCall<RingSegment> _call;
    private readonly IServerStreamWriter<RingSegment> _successor;
    private readonly Task _writer;
    private readonly PeerInbox _inbox;
    private readonly string _jobId;
    private readonly TimeSpan _peerTimeout;

    private GrpcRingLink(PeerInbox inbox, string jobId, long generation, AsyncServerStreamingCall<RingSegment> call,
        IServerStreamWriter<RingSegment> successor, TimeSpan peerTimeout, int successorRank) : base(generation)
    {
        (_inbox, _jobId, _call, _successor, _peerTimeout) = (inbox, jobId, call, successor, peerTimeout);
        _writer = WriteLoopAsync(successorRank);
    }

    /// <summary>Opens the stream from the predecessor and waits (up to the peer timeout) for the successor's call.</summary>
    public static async Task<GrpcRingLink> OpenAsync(PeerInbox inbox, GrpcChannel predecessor, string predecessorAddress, string jobId, long generation,
        int rank, int successorRank, TimeSpan peerTimeout, CancellationToken cancellationToken)
    {
        var call = new RingPeer.RingPeerClient(predecessor).Stream(
            new RingHello { JobId = jobId, Generation = generation, FromRank = rank }, cancellationToken: cancellationToken);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(peerTimeout);
            var successor = await inbox.AcceptAsync(jobId, generation, successorRank, timeout.Token);
            return new GrpcRingLink(inbox, jobId, generation, call, successor, peerTimeout, successorRank);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
        {
            call.Dispose();
            inbox.Release(jobId, generation);
            throw new RingBrokenException($"ring generation {generation}: the successor (rank {successorRank}) did not call within {peerTimeout.TotalSeconds:0.#} s " +
                $"or the predecessor at {predecessorAddress} failed ({e.Message})", e);
        }
    }

    public override async ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken)
    {
        ThrowIfBroken();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, Broken.Token);
        timeout.CancelAfter(_peerTimeout);
        try
        {
            if (!await _call.ResponseStream.MoveNext(timeout.Token))
                throw new RingBrokenException($"ring generation {Generation}: the predecessor ended its stream");
            return _call.ResponseStream.Current;
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException or IOException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw Break(new RingBrokenException(
                Broken.IsCancellationRequested || e is not OperationCanceledException
                    ? $"ring generation {Generation}: the predecessor's stream failed ({e.Message})"
                    : $"ring generation {Generation}: nothing from the predecessor for {_peerTimeout.TotalSeconds:0.#} s", e));
        }
    }

    private async Task WriteLoopAsync(int successorRank)
    {
        try
        {
            await foreach (var segment in Outgoing.Reader.ReadAllAsync(Broken.Token))
                await _successor.WriteAsync(segment, Broken.Token);
        }
        catch (Exception e) when (!Broken.IsCancellationRequested)
        {
            Break(new RingBrokenException($"ring generation {Generation}: sending to the successor (rank {successorRank}) failed ({e.Message})", e));
        }
        catch (Exception)
        {
            // Broken on purpose (dispose or the receive side failed).
        }
    }

    /// <summary>
    /// Leaves the generation. After a completed collective the leave is graceful: the queued
    /// segments are written (up to <see cref="CloseTimeout"/>) and the successor's call ends as a
    /// success, so it reads them all. A broken link ends the successor's call as Aborted at once.
    /// </summary>
    public override async ValueTask DisposeAsync()
    {
        Outgoing.Writer.TryComplete();
        bool graceful = !IsBroken;
        if (graceful)
        {
            try { await _writer.WaitAsync(CloseTimeout); }
            catch (TimeoutException) { graceful = false; }
        }
        _inbox.Release(_jobId, Generation, graceful);
        if (!Broken.IsCancellationRequested) await Broken.CancelAsync();
        try { await _writer; } catch (OperationCanceledException) { }
        _call.Dispose();
        Broken.Dispose();
    }
}
