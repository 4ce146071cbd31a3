using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Threading.Channels;
using Cluster.Protos;
using Cluster.Shared.Security;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// One generation's <see cref="IRingLink"/> over the ring data ports (plain TCP, or TLS):
/// incoming, this member's connection to its predecessor's port; outgoing, the successor's
/// connection to this member's port, fed by a writer task from a bounded queue so that
/// receiving, adding and sending overlap. Any failure breaks the link; a broken link closes
/// both connections so that the break travels on around the ring.
/// </summary>
public sealed class SocketRingLink : RingLinkBase
{
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(10);
    private readonly Stream _predecessor;
    private readonly Stream _successor;
    private readonly Task _writer;
    private readonly RingDataListener _listener;
    private readonly string _jobId;
    private readonly TimeSpan _peerTimeout;
    // Received segments wrap this buffer: each is valid until the next receive (IRingLink.ReceiveAsync).
    private readonly byte[] _receiveBuffer = new byte[RingSocketProtocol.FrameBytesMax];
    private readonly byte[] _headerBuffer = new byte[RingSocketProtocol.SegmentHeaderBytesMax];

    private SocketRingLink(RingDataListener listener, string jobId, long generation, Stream predecessor, Stream successor, TimeSpan peerTimeout, int successorRank)
        : base(generation)
    {
        (_listener, _jobId, _predecessor, _successor, _peerTimeout) = (listener, jobId, predecessor, successor, peerTimeout);
        _writer = WriteLoopAsync(successorRank);
    }

    /// <summary>Connects to the predecessor's data port and waits (up to the peer timeout) for the successor's connection.</summary>
    public static async Task<SocketRingLink> OpenAsync(RingDataListener listener, ClusterSecurity security, string predecessorAddress, string jobId, long generation,
        int rank, int successorRank, TimeSpan peerTimeout, CancellationToken cancellationToken)
    {
        security.CheckCanConnect(predecessorAddress, "ring peer");
        var uri = new Uri(predecessorAddress);
        Stream? predecessor = null;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(peerTimeout);
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try { await socket.ConnectAsync(uri.Host, uri.Port, timeout.Token); }
            catch { socket.Dispose(); throw; }
            predecessor = new NetworkStream(socket, ownsSocket: true);
            if (uri.Scheme == Uri.UriSchemeHttps)
            {
                var tls = new SslStream(predecessor, leaveInnerStreamOpen: false);
                predecessor = tls;
                await tls.AuthenticateAsClientAsync(DataPortTls.ClientOptions(security, uri.Host), timeout.Token);
            }
            await RingSocketProtocol.ConnectAsync(predecessor, security.Secret, new RingHello { JobId = jobId, Generation = generation, FromRank = rank }, timeout.Token);
            var successor = await listener.AcceptAsync(jobId, generation, successorRank, timeout.Token);
            return new SocketRingLink(listener, jobId, generation, predecessor, successor, peerTimeout, successorRank);
        }
        catch (Exception e) when (e is IOException or SocketException or AuthenticationException or InvalidDataException or RingBrokenException
            or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            if (predecessor is not null) await predecessor.DisposeAsync();
            listener.Release(jobId, generation);
            throw new RingBrokenException($"ring generation {generation}: the predecessor's data port at {predecessorAddress} failed " +
                $"or the successor (rank {successorRank}) did not connect within {peerTimeout.TotalSeconds:0.#} s ({e.Message})", e);
        }
    }

    public override async ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken)
    {
        ThrowIfBroken();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, Broken.Token);
        timeout.CancelAfter(_peerTimeout);
        try
        {
            return await RingSocketProtocol.ReadSegmentAsync(_predecessor, _headerBuffer, _receiveBuffer, timeout.Token)
                ?? throw new RingBrokenException($"ring generation {Generation}: the predecessor closed its connection");
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException or ObjectDisposedException or Google.Protobuf.InvalidProtocolBufferException
            or OperationCanceledException or RingBrokenException && !cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw Break(new RingBrokenException(
                e is OperationCanceledException
                    ? $"ring generation {Generation}: nothing from the predecessor for {_peerTimeout.TotalSeconds:0.#} s"
                    : $"ring generation {Generation}: the predecessor's connection failed ({e.Message})", e));
        }
    }

    private async Task WriteLoopAsync(int successorRank)
    {
        try
        {
            var reader = Outgoing.Reader;
            while (await reader.WaitToReadAsync(Broken.Token))
            {
                while (reader.TryRead(out var segment))
                    await RingSocketProtocol.WriteSegmentAsync(_successor, segment, Broken.Token);
                await _successor.FlushAsync(Broken.Token);
            }
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

    /// <summary>Closes both connections: the neighbours' reads and writes fail at once.</summary>
    protected override void OnBroken()
    {
        _predecessor.Dispose();
        _successor.Dispose();
    }

    /// <summary>
    /// Leaves the generation. After a completed collective the queued segments are written first
    /// (up to <see cref="CloseTimeout"/>), so that the successor reads them all before the end
    /// of its connection; a broken link is closed at once.
    /// </summary>
    public override async ValueTask DisposeAsync()
    {
        Outgoing.Writer.TryComplete();
        if (!IsBroken)
        {
            try { await _writer.WaitAsync(CloseTimeout); }
            catch (TimeoutException) { }
        }
        if (!Broken.IsCancellationRequested) await Broken.CancelAsync();
        try { await _writer; } catch (OperationCanceledException) { }
        await _predecessor.DisposeAsync();
        await _successor.DisposeAsync();
        _listener.Release(_jobId, Generation);
        Broken.Dispose();
    }
}
