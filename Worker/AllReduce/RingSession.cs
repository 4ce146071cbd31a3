using Cluster.Shared.Security;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Shared.Wire;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// This worker's membership in a job's ring: joins (and rejoins) through the coordinator, opens
/// the generation's link (<see cref="SocketRingLink"/> over the data ports when every member has
/// one and the worker allows it, else <see cref="GrpcRingLink"/>), and fetches vectors from other members.
/// </summary>
public sealed class RingSession(Assignment assignment, Coordinator.CoordinatorClient coordinator, PeerHost peers, WorkerOptions options, ILogger logger) : IAsyncDisposable
{
    private const int JoinAttemptsMax = 8;
    private static readonly TimeSpan JoinCallTimeout = TimeSpan.FromSeconds(40);
    private readonly Dictionary<string, GrpcChannel> _channels = [];
    private IRingConnection? _link;

    public long Generation { get; private set; }
    public IReadOnlyList<RingMember> Members { get; private set; } = [];
    /// <summary>This worker's place in the ring (0 = first member).</summary>
    public int Position { get; private set; }
    public int Size => Members.Count;
    public RingAllReduce Reducer { get; private set; } = new(0, 1, sizeof(float));
    public IRingLink Link => _link ?? throw new InvalidOperationException("ring: no link in a ring of one");

    private int BucketBytes => assignment.Spec.BucketBytes > 0 ? assignment.Spec.BucketBytes : JobSpecification.BucketBytesDefault;

    /// <summary>Leaves the current generation (if any) and joins the next; false when the job dropped this worker.</summary>
    public async Task<bool> JoinAsync(long committedStep, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            _link?.Abort("left for a new generation");
            await CloseLinkAsync();
            var reply = await RequestJoinAsync(committedStep, cancellationToken);
            if (reply.Excluded) return false;
            Generation = reply.Generation;
            Members = reply.Members;
            Position = Members.Select((m, i) => (m, i)).Single(x => x.m.Rank == assignment.Rank).i;
            Reducer = new RingAllReduce(Position, Size, BucketBytes);
            AllReduceLog.RingFormed(logger, assignment.JobId, assignment.Rank, Generation, Position, Size, string.Join(" ", Members.Select(m => m.Rank)));
            if (Size == 1) return true;
            var successor = Members[(Position + 1) % Size];
            var predecessor = Members[(Position + Size - 1) % Size];
            try
            {
                bool sockets = options.RingTransport == RingTransport.Tcp && Members.All(m => m.DataAddress.Length > 0);
                _link = sockets
                    ? await SocketRingLink.OpenAsync(peers.Data, options.Security!, predecessor.DataAddress, assignment.JobId, Generation,
                        assignment.Rank, successor.Rank, options.PeerTimeout, cancellationToken)
                    : await GrpcRingLink.OpenAsync(peers.Inbox, ChannelTo(predecessor.PeerAddress), predecessor.PeerAddress, assignment.JobId, Generation,
                        assignment.Rank, successor.Rank, options.PeerTimeout, cancellationToken);
                return true;
            }
            catch (RingBrokenException e) when (attempt < JoinAttemptsMax)
            {
                AllReduceLog.RingBroken(logger, assignment.JobId, assignment.Rank, Generation, e.Message);
            }
        }
    }

    private async Task<JoinRingReply> RequestJoinAsync(long committedStep, CancellationToken cancellationToken)
    {
        var request = new JoinRingRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, PeerAddress = peers.Address, CommittedStep = committedStep, LastGeneration = Generation,
            DataAddress = options.RingTransport == RingTransport.Tcp ? peers.Data.Address : "",
        };
        while (true)
        {
            var reply = await coordinator.JoinRingAsync(request, deadline: DateTime.UtcNow + JoinCallTimeout, cancellationToken: cancellationToken);
            if (reply.Excluded || reply.Generation > 0) return reply;
        }
    }

    /// <summary>Copies a member's vector (parameters, or the reduced gradient of a step) into <paramref name="destination"/>.</summary>
    public async Task FetchAsync(RingMember source, FetchKind kind, long step, Memory<byte> destination, CancellationToken cancellationToken)
    {
        try
        {
            using var call = new RingPeer.RingPeerClient(ChannelTo(source.PeerAddress)).Fetch(
                new FetchRequest { JobId = assignment.JobId, Kind = kind, Step = step },
                deadline: DateTime.UtcNow + options.PeerTimeout, cancellationToken: cancellationToken);
            var stream = call.ResponseStream;
            if (!await stream.MoveNext(cancellationToken) || stream.Current.BodyCase != FetchMessage.BodyOneofCase.ElementCount)
                throw new RingBrokenException($"fetch from rank {source.Rank}: the stream did not start with an element count");
            if (stream.Current.ElementCount * sizeof(float) != destination.Length)
                throw new InvalidDataException($"fetch from rank {source.Rank}: {stream.Current.ElementCount} elements; this model has {destination.Length / sizeof(float)}");
            long received = 0;
            while (await stream.MoveNext(cancellationToken))
                received = TensorWire.CopyNextChunk(stream.Current.Chunk, destination.Span, received);
            if (received * sizeof(float) != destination.Length)
                throw new RingBrokenException($"fetch from rank {source.Rank}: got {received} of {destination.Length / sizeof(float)} elements");
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new RingBrokenException($"fetch of {kind} step {step} from rank {source.Rank} at {source.PeerAddress} failed ({e.StatusCode}: {e.Status.Detail})", e);
        }
    }

    private GrpcChannel ChannelTo(string address)
    {
        if (!_channels.TryGetValue(address, out var channel))
        {
            options.Security!.CheckCanConnect(address, "ring peer");
            var handler = ClusterTransport.Handler(options.Security, sockets =>
            {
                sockets.InitialHttp2StreamWindowSize = 16 << 20;
                sockets.KeepAlivePingDelay = TimeSpan.FromSeconds(10);
                sockets.KeepAlivePingTimeout = TimeSpan.FromSeconds(10);
            });
            _channels[address] = channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = handler, MaxReceiveMessageSize = 8 << 20 });
        }
        return channel;
    }

    private async Task CloseLinkAsync()
    {
        if (_link is null) return;
        await _link.DisposeAsync();
        _link = null;
    }

    /// <summary>Every collective of the job is done: leaving the ring lets the successor read what is still in flight.</summary>
    public void MarkCompleted() => _completed = true;

    private bool _completed;

    public async ValueTask DisposeAsync()
    {
        if (!_completed) _link?.Abort("the job ended on this member");
        await CloseLinkAsync();
        peers.Inbox.Release(assignment.JobId, long.MaxValue);
        peers.Data.Release(assignment.JobId, long.MaxValue);
        foreach (var channel in _channels.Values) channel.Dispose();
    }
}
