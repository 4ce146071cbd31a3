using System.Threading.Channels;
using Cluster.Protos;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// What both ring links share: the bounded queue of segments a writer task sends to the
/// successor (so that receiving, adding and sending overlap), and breaking: the first failure
/// is kept, every later call throws it, and the subclass closes its connections so that the
/// break travels on around the ring.
/// </summary>
public abstract class RingLinkBase(long generation) : IRingConnection
{
    private const int QueuedSegmentsMax = 64;
    private Exception? _failure;

    protected Channel<RingSegment> Outgoing { get; } =
        Channel.CreateBounded<RingSegment>(new BoundedChannelOptions(QueuedSegmentsMax) { SingleReader = true, SingleWriter = true });
    protected CancellationTokenSource Broken { get; } = new();
    protected long Generation { get; } = generation;
    protected bool IsBroken => _failure is not null;

    public async ValueTask SendAsync(RingSegment segment, CancellationToken cancellationToken)
    {
        ThrowIfBroken();
        if (Outgoing.Writer.TryWrite(segment)) return;
        using var either = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, Broken.Token);
        try
        {
            await Outgoing.Writer.WriteAsync(segment, either.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw;
        }
    }

    public abstract ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken);

    /// <summary>Marks the link broken (so that disposing it does not wait for the successor).</summary>
    public void Abort(string reason) => Break(new RingBrokenException($"ring generation {Generation}: {reason}"));

    protected RingBrokenException Break(RingBrokenException failure)
    {
        Interlocked.CompareExchange(ref _failure, failure, null);
        Broken.Cancel();
        OnBroken();
        return failure;
    }

    /// <summary>Called once broken: close what makes the neighbours notice.</summary>
    protected virtual void OnBroken()
    {
    }

    protected void ThrowIfBroken()
    {
        if (_failure is { } failure) throw new RingBrokenException(failure.Message, failure);
    }

    public abstract ValueTask DisposeAsync();
}
