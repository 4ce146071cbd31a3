using Cluster.Protos;
using Cluster.Shared.Rpc;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cluster.Worker.Training;

/// <summary>
/// The worker's side of parameter_server.proto for one server (one key range): Initialize,
/// JoinRank and Finish over one gRPC channel; pushes and pulls over the server's data port
/// (<see cref="ParameterDataClient"/>, learnt from the Initialize reply) or, with
/// <see cref="ParameterServerTransport.Grpc"/> or a server without one, as gRPC streams in chunks.
/// </summary>
public sealed class ParameterServerClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly ParameterServer.ParameterServerClient _client;
    private readonly TimeSpan _connectTimeout, _callTimeout, _barrierTimeout;
    private readonly ClusterSecurity _security;
    private readonly ParameterServerTransport _transport;
    private ParameterDataClient? _data;
    private int _regionBytes;

    public ParameterServerClient(string address, ClusterSecurity security, TimeSpan connectTimeout, TimeSpan callTimeout, TimeSpan barrierTimeout,
        ParameterServerTransport transport = ParameterServerTransport.Tcp)
    {
        Address = address;
        (_security, _transport) = (security, transport);
        _channel = ClusterTransport.Channel(address, security, "parameter server");
        _client = new ParameterServer.ParameterServerClient(_channel);
        (_connectTimeout, _callTimeout, _barrierTimeout) = (connectTimeout, callTimeout, barrierTimeout);
    }

    public string Address { get; }

    /// <summary>Stopwatch timestamp of the last push's acknowledgement (step timeline: end of "push").</summary>
    public long LastPushDoneTimestamp { get; private set; }

    /// <summary>Stopwatch timestamp of the last pull's first chunk of parameters (step timeline: end of "wait").</summary>
    public long LastPullFirstChunkTimestamp { get; private set; }

    /// <summary>
    /// Payload of the chunks a push should be cut into: the data port takes whole chunks of
    /// up to 1 MiB (fewer frames); gRPC messages stay below the large-object threshold.
    /// </summary>
    public int ChunkBytes => _data is null ? TensorWire.ChunkBytesSent : TensorWire.ChunkBytesMax;

    /// <summary>The data port pushes and pulls go to; null: gRPC streams.</summary>
    public string? DataAddress => _data?.Address;

    /// <summary>Whether the last data-port connection opened shares a region with the server (--ps-transport shm, same host).</summary>
    public bool SharesRegion => _data?.LastConnectionShared ?? false;

    /// <summary>Why the last data-port connection opened shares no region although --ps-transport shm asked for one; null otherwise.</summary>
    public string? RegionRefusal => _data?.LastRegionRefusal;

    /// <summary>How pushes and pulls travel to this server now, in words (for the worker's log).</summary>
    public string DescribeTransport() => _data switch
    {
        null => "gRPC streams",
        _ when SharesRegion => $"shared memory (frames on the data port {_data.Address})",
        _ when RegionRefusal is { } refusal => $"the data port {_data.Address} (no shared region: {refusal})",
        _ => $"the data port {_data.Address}",
    };

    /// <summary>
    /// The first call to the server: retried until the connect timeout while the server is not up
    /// yet. Its reply names the server's data port (a restarted server may have a new one).
    /// </summary>
    public async Task<InitializeReply> InitializeAsync(InitializeHeader header, ReadOnlyMemory<float> parameters, CancellationToken cancellationToken,
        TimeSpan? connectTimeout = null)
    {
        var reply = await Reconnect.UntilAsync("parameter server", Address, connectTimeout ?? _connectTimeout, async deadline =>
        {
            using var call = _client.Initialize(deadline: Min(deadline, Deadline(_callTimeout)), cancellationToken: cancellationToken);
            await SendAsync(call.RequestStream, new InitializeMessage { Header = header }, chunk => new InitializeMessage { Chunk = chunk },
                TensorWire.Chunks(FloatMemory.AsBytes(parameters)), cancellationToken);
            return await call.ResponseAsync;
        }, cancellationToken);
        // A shared region holds the largest exchange: this range in float32.
        _regionBytes = _transport == ParameterServerTransport.Shm ? (int)Math.Min((long)parameters.Length * sizeof(float), SharedRegion.BytesMax) : 0;
        UseDataPort(_transport != ParameterServerTransport.Grpc && reply.DataAddress.Length > 0 ? reply.DataAddress : null);
        return reply;
    }

    private void UseDataPort(string? address)
    {
        // Initialize again (a recovery): connections to the server as it was are not trusted.
        _data?.DropIdle();
        if (address == _data?.Address) return;
        if (address is not null) _security.CheckCanConnect(address, "parameter server data port");
        var previous = _data;
        _data = address is null ? null : new ParameterDataClient(address, _security, _connectTimeout, _regionBytes, SharedRegion.DirectoryOnThisHost);
        previous?.Dispose();
    }

    /// <summary>Pushes one step's gradient for this server's range, already cut into chunks.</summary>
    public async Task<PushReply> PushAsync(PushHeader header, IEnumerable<TensorChunk> chunks, CancellationToken cancellationToken)
    {
        PushReply reply;
        if (_data is { } data)
            reply = await Guard(() => data.PushAsync(header, chunks, _barrierTimeout, cancellationToken));
        else
        {
            using var call = _client.PushGradients(deadline: Deadline(_barrierTimeout), cancellationToken: cancellationToken);
            await Guard(() => SendAsync(call.RequestStream, new PushMessage { Header = header }, chunk => new PushMessage { Chunk = chunk }, chunks, cancellationToken));
            reply = await Guard(() => call.ResponseAsync);
        }
        LastPushDoneTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        return reply;
    }

    /// <summary>What the last pull said of the ranks behind the steps just applied (empty before any), set as soon as it arrives.</summary>
    public AppliedSteps LastApplied { get; private set; } = new();

    /// <summary>Makes <paramref name="rank"/> a member of the job's barrier from <paramref name="fromStep"/> on (a joining worker).</summary>
    public async Task<JoinRankReply> JoinRankAsync(string jobId, int rank, long fromStep, CancellationToken cancellationToken) =>
        await Guard(async () => await _client.JoinRankAsync(
            new JoinRankRequest { JobId = jobId, Rank = rank, FromStep = fromStep }, deadline: Deadline(_callTimeout), cancellationToken: cancellationToken));

    /// <summary>
    /// Waits for version >= <paramref name="minVersion"/> of this range and decodes it into
    /// <paramref name="destination"/>. <paramref name="onApplied"/> is called, on the pull's
    /// thread, once <see cref="LastApplied"/> holds what this pull said (under BSP before its
    /// chunks arrive); not at all for a pull that says nothing of it.
    /// </summary>
    public async Task PullAsync(string jobId, long minVersion, DType dtype, Memory<float> destination, CancellationToken cancellationToken,
        Action? onApplied = null)
    {
        var request = new PullRequest { JobId = jobId, MinVersion = minVersion, Dtype = dtype };
        void Applied(AppliedSteps applied)
        {
            LastApplied = applied;
            onApplied?.Invoke();
        }
        if (_data is { } data)
        {
            var (_, firstChunk) = await Guard(() => data.PullAsync(request, destination, _barrierTimeout, cancellationToken, Applied));
            if (firstChunk != 0) LastPullFirstChunkTimestamp = firstChunk;
            return;
        }
        using var call = _client.PullParameters(request,
            deadline: Deadline(_barrierTimeout), cancellationToken: cancellationToken);
        await Guard(async () =>
        {
            var stream = call.ResponseStream;
            if (!await stream.MoveNext(cancellationToken) || stream.Current.BodyCase != PullMessage.BodyOneofCase.Header)
                throw new InvalidDataException($"parameter server {Address}: pull stream did not start with a header");
            var header = stream.Current.Header;
            if (header.ElementCount != destination.Length)
                throw new InvalidDataException(
                    $"parameter server {Address}: holds {header.ElementCount} elements for job {jobId}; this worker expects {destination.Length}");
            long received = 0;
            while (await stream.MoveNext(cancellationToken))
            {
                if (stream.Current.BodyCase == PullMessage.BodyOneofCase.Applied)
                {
                    Applied(stream.Current.Applied);
                    continue;
                }
                if (received == 0) LastPullFirstChunkTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
                received = ChunkReader.ReadDense(stream.Current.Chunk, header.Dtype, destination.Span, received);
            }
            if (received != header.ElementCount)
                throw new InvalidDataException($"parameter server {Address}: sent {received} of {header.ElementCount} elements");
            return true;
        });
    }

    public async Task FinishAsync(string jobId, CancellationToken cancellationToken) =>
        await Guard(async () => await _client.FinishAsync(new FinishRequest { JobId = jobId }, deadline: Deadline(_callTimeout), cancellationToken: cancellationToken));

    /// <summary>A client stream of one header message, then the chunks (which wrap the caller's buffers).</summary>
    private static async Task SendAsync<TMessage>(
        IClientStreamWriter<TMessage> stream, TMessage header, Func<TensorChunk, TMessage> wrap, IEnumerable<TensorChunk> chunks, CancellationToken cancellationToken)
    {
        await stream.WriteAsync(header, cancellationToken);
        foreach (var chunk in chunks)
            await stream.WriteAsync(wrap(chunk), cancellationToken);
        await stream.CompleteAsync();
    }

    private static DateTime Deadline(TimeSpan timeout) => DateTime.UtcNow + timeout;
    private static DateTime Min(DateTime a, DateTime b) => a < b ? a : b;

    /// <summary>Turns transport failures into errors that name the server's address.</summary>
    private async Task<T> Guard<T>(Func<Task<T>> call)
    {
        try
        {
            return await call();
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
        {
            throw new PeerUnreachableException($"parameter server at {Address} did not answer ({e.StatusCode}: {e.Status.Detail})", e);
        }
    }

    private Task Guard(Func<Task> call) => Guard(async () => { await call(); return true; });

    public void Dispose()
    {
        _data?.Dispose();
        _channel.Dispose();
    }
}
