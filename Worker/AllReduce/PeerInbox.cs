using Cluster.Protos;
using Grpc.Core;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// Where the RingPeer service (one per worker process) meets the trainer: incoming Stream calls
/// wait here, keyed by (job, generation), until the trainer takes them; the call stays open
/// until the trainer releases it. Fetch calls read from the vectors the trainer publishes.
/// </summary>
public sealed class PeerInbox
{
    private readonly object _gate = new();
    private readonly Dictionary<(string JobId, long Generation), Slot> _slots = [];
    private readonly Dictionary<string, Func<FetchRequest, ReadOnlyMemory<byte>?>> _sources = [];

    /// <summary>Called by the service for an incoming stream; completes when the trainer releases it.</summary>
    public async Task OfferAsync(RingHello hello, IAsyncStreamReader<RingMessage> reader, CancellationToken callCancelled)
    {
        Slot slot;
        lock (_gate)
        {
            slot = SlotFor(hello.JobId, hello.Generation);
            if (!slot.Arrived.TrySetResult((hello, reader)))
                throw new RpcException(new Status(StatusCode.AlreadyExists, $"job {hello.JobId} generation {hello.Generation} already has a predecessor stream"));
        }
        await slot.Released.Task.WaitAsync(callCancelled);
    }

    /// <summary>The predecessor's stream for this generation, once it has called.</summary>
    public async Task<IAsyncStreamReader<RingMessage>> AcceptAsync(string jobId, long generation, int fromRank, CancellationToken cancellationToken)
    {
        Slot slot;
        lock (_gate) slot = SlotFor(jobId, generation);
        var (hello, reader) = await slot.Arrived.Task.WaitAsync(cancellationToken);
        if (hello.FromRank != fromRank)
            throw new RingBrokenException($"ring: generation {generation} stream came from rank {hello.FromRank}; expected the predecessor, rank {fromRank}");
        return reader;
    }

    /// <summary>
    /// Ends the incoming calls of a job up to <paramref name="generation"/>: as a success when this
    /// member read all it needed (<paramref name="graceful"/>), else as Aborted (the predecessor's writes then fail).
    /// </summary>
    public void Release(string jobId, long generation, bool graceful = false)
    {
        lock (_gate)
        {
            foreach (var key in _slots.Keys.Where(k => k.JobId == jobId && k.Generation <= generation).ToList())
            {
                if (graceful && key.Generation == generation) _slots[key].Released.TrySetResult();
                else _slots[key].Released.TrySetException(new RpcException(new Status(StatusCode.Aborted, $"job {jobId}: ring generation {key.Generation} is over")));
                _slots.Remove(key);
            }
        }
    }

    /// <summary>Publishes what Fetch serves for a job; null removes it.</summary>
    public void Publish(string jobId, Func<FetchRequest, ReadOnlyMemory<byte>?>? source)
    {
        lock (_gate)
        {
            if (source is null) _sources.Remove(jobId);
            else _sources[jobId] = source;
        }
    }

    public ReadOnlyMemory<byte>? Find(FetchRequest request)
    {
        Func<FetchRequest, ReadOnlyMemory<byte>?>? source;
        lock (_gate) _sources.TryGetValue(request.JobId, out source);
        return source?.Invoke(request);
    }

    private Slot SlotFor(string jobId, long generation)
    {
        if (!_slots.TryGetValue((jobId, generation), out var slot))
            _slots[(jobId, generation)] = slot = new Slot();
        return slot;
    }

    private sealed class Slot
    {
        public TaskCompletionSource<(RingHello, IAsyncStreamReader<RingMessage>)> Arrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Released { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
