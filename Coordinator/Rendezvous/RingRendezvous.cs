using Cluster.Protos;

namespace Cluster.Coordinator.Rendezvous;

/// <summary>
/// The ring of one allreduce job (see ring.proto): which ranks are members, in which order, at
/// which addresses. Generation 1 forms when every rank has joined. Later generations form when
/// every member of the previous one has rejoined, or when the join window (counted from the
/// first rejoin) has passed; members that did not rejoin in time are dropped from the job.
/// Plain class with its own lock: tested without a network.
/// </summary>
public sealed class RingRendezvous(string jobId, int worldSize, TimeSpan joinWindow, TimeProvider time)
{
    private readonly object _gate = new();
    private readonly HashSet<int> _dropped = [];
    private readonly SortedDictionary<int, (RingMember Member, TaskCompletionSource<JoinRingReply> Reply)> _joining = [];
    private JoinRingReply _formed = new();
    private DateTimeOffset? _windowOpenedAt;

    public int WorldSize => worldSize;
    public TimeSpan JoinWindow => joinWindow;

    /// <summary>Current generation (0 before the first formation).</summary>
    public long Generation { get { lock (_gate) return _formed.Generation; } }

    public IReadOnlyList<int> DroppedRanks { get { lock (_gate) return [.. _dropped]; } }

    public int LiveCount { get { lock (_gate) return worldSize - _dropped.Count; } }

    /// <summary>Ranks of the current generation in ring order.</summary>
    public IReadOnlyList<int> Members { get { lock (_gate) return [.. _formed.Members.Select(m => m.Rank)]; } }

    /// <summary>
    /// Waits up to <paramref name="wait"/> for the ring this rank asks to join. A reply with
    /// generation 0 means "not formed yet, ask again".
    /// </summary>
    public async Task<JoinRingReply> JoinAsync(JoinRingRequest request, TimeSpan wait, CancellationToken cancellationToken)
    {
        Task<JoinRingReply> reply;
        lock (_gate)
        {
            if (request.Rank < 0 || request.Rank >= worldSize)
                throw new ArgumentException($"rank: {request.Rank} is out of range; job {jobId} has ranks 0 to {worldSize - 1}");
            if (_formed.Generation == 0 && request.LastGeneration > 0)
                throw new InvalidOperationException(
                    $"last_generation: {request.LastGeneration}; job {jobId}'s ring formed before this coordinator restarted, and ring generations are not kept in its state file: the ring cannot re-form");
            if (request.LastGeneration > _formed.Generation || request.LastGeneration < 0)
                throw new ArgumentException($"last_generation: {request.LastGeneration}; job {jobId} is at ring generation {_formed.Generation}");
            if (_dropped.Contains(request.Rank)) return Excluded();
            if (request.LastGeneration < _formed.Generation)
                // Its reply was lost (it asks again) or the ring re-formed without it.
                return _formed.Members.Any(m => m.Rank == request.Rank) ? _formed : Excluded();
            if (!_joining.TryGetValue(request.Rank, out var entry))
            {
                entry = (new RingMember(), new TaskCompletionSource<JoinRingReply>(TaskCreationOptions.RunContinuationsAsynchronously));
                _joining[request.Rank] = entry;
            }
            entry.Member.Rank = request.Rank;
            entry.Member.PeerAddress = request.PeerAddress;
            entry.Member.DataAddress = request.DataAddress;
            entry.Member.CommittedStep = request.CommittedStep;
            if (_formed.Generation > 0) _windowOpenedAt ??= time.GetUtcNow();
            TryForm();
            reply = entry.Reply.Task;
        }
        while (!reply.IsCompleted)
        {
            var windowLeft = WindowLeft();
            var slice = windowLeft is { } left && left < wait ? left : wait;
            await Task.WhenAny(reply, Task.Delay(slice <= TimeSpan.Zero ? TimeSpan.FromMilliseconds(1) : slice, time, cancellationToken));
            cancellationToken.ThrowIfCancellationRequested();
            lock (_gate) TryForm();
            if (windowLeft is null || windowLeft >= wait) break;
            wait -= slice;
        }
        return reply.IsCompleted ? await reply : new JoinRingReply();
    }

    /// <summary>Removes a rank that is known dead (no heartbeat); may complete a formation.</summary>
    public void Drop(int rank)
    {
        lock (_gate)
        {
            if (!_dropped.Add(rank)) return;
            if (_joining.Remove(rank, out var entry)) entry.Reply.TrySetResult(Excluded());
            TryForm();
        }
    }

    /// <summary>Answers every waiting rank with "excluded": the job is over.</summary>
    public void Close()
    {
        lock (_gate)
        {
            foreach (var (_, reply) in _joining.Values) reply.TrySetResult(Excluded());
            _joining.Clear();
        }
    }

    private TimeSpan? WindowLeft()
    {
        lock (_gate) return _windowOpenedAt is { } opened ? joinWindow - (time.GetUtcNow() - opened) : null;
    }

    private void TryForm()
    {
        if (_joining.Count == 0) return;
        bool everyone = _formed.Generation == 0
            ? _joining.Count == worldSize - _dropped.Count
            : _formed.Members.All(m => _joining.ContainsKey(m.Rank) || _dropped.Contains(m.Rank));
        bool windowOver = _windowOpenedAt is { } opened && time.GetUtcNow() - opened >= joinWindow;
        if (!everyone && !windowOver) return;

        foreach (var member in _formed.Members)
            if (!_joining.ContainsKey(member.Rank)) _dropped.Add(member.Rank);
        var formed = new JoinRingReply { Generation = _formed.Generation + 1 };
        formed.Members.AddRange(_joining.Values.Select(j => j.Member));
        _formed = formed;
        foreach (var (_, reply) in _joining.Values) reply.TrySetResult(formed);
        _joining.Clear();
        _windowOpenedAt = null;
    }

    private static JoinRingReply Excluded() => new() { Excluded = true };
}
