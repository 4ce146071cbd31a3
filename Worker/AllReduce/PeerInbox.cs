using Cluster.Protos;
using Grpc.Core;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// Where the RingPeer service (one per worker process) meets the trainer: the successor's Stream
/// call waits here, keyed by (job, generation), until the trainer takes its response stream to
/// write segments into; the call stays open until the trainer releases it. Fetch calls read from
/// the vectors the trainer publishes.
/// </summary>
public sealed class PeerInbox
{
    private readonly object _gate = new();
    private readonly Dictionary<(string JobId, long Generation), Slot> _slots = [];
    private readonly Dictionary<string, Func<FetchRequest, ReadOnlyMemory<byte>?>> _sources = [];

    /// <summary>Called by the service for the successor's Stream call; completes when the trainer releases it.</summary>
    public async Task OfferAsync(RingHello hello, IServerStreamWriter<RingSegment> writer, CancellationToken callCancelled)
    {
        Slot slot;
        lock (_gate)
        {
            slot = SlotFor(hello.JobId, hello.Generation);
            if (!slot.Arrived.TrySetResult((hello, writer)))
                throw new RpcException(new Status(StatusCode.AlreadyExists, $"job {hello.JobId} generation {hello.Generation} already has a successor stream"));
        }
        await slot.Released.Task.WaitAsync(callCancelled);
    }

    /// <summary>The successor's stream to write this generation's segments into, once it has called.</summary>
    public async Task<IServerStreamWriter<RingSegment>> AcceptAsync(string jobId, long generation, int fromRank, CancellationToken cancellationToken)
    {
        Slot slot;
        lock (_gate) slot = SlotFor(jobId, generation);
        var (hello, writer) = await slot.Arrived.Task.WaitAsync(cancellationToken);
        if (hello.FromRank != fromRank)
            throw new RingBrokenException($"ring: generation {generation} stream was asked for by rank {hello.FromRank}; expected the successor, rank {fromRank}");
        return writer;
    }

    /// <summary>
    /// Ends the successor's calls of a job up to <paramref name="generation"/>: as a success when
    /// every segment was written (<paramref name="graceful"/>), else as Aborted (the successor's reads then fail).
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
        public TaskCompletionSource<(RingHello, IServerStreamWriter<RingSegment>)> Arrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Released { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
