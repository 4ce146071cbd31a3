using Cluster.Protos;
using Cluster.Shared.Sharding;

namespace Cluster.Worker.Training;

/// <summary>
/// Talks to all K parameter servers of a job at once: each owns one key range of the flat
/// vector. A step pushes every range and, at the same time, pulls the next version of every
/// range, so pulling overlaps pushing and the servers' per-partition aggregation.
/// </summary>
public sealed class ShardedParameterClient : IDisposable
{
    private readonly ParameterServerClient[] _servers;
    private readonly GradientEncoder _encoder;
    private readonly string _jobId;
    private readonly int _rank;

    public ShardedParameterClient(Assignment assignment, int elementCount, DType dtype, double topKRatio, WorkerOptions options)
    {
        _jobId = assignment.JobId;
        _rank = assignment.Rank;
        Dtype = dtype;
        int serverCount = assignment.ParameterServers.Count;
        PartitionElements = KeyRanges.PartitionElementsFor(elementCount, serverCount);
        Ranges = KeyRanges.Split(elementCount, serverCount, PartitionElements);
        _servers = assignment.ParameterServers
            .Select(address => new ParameterServerClient(address, options.Security!, options.ConnectTimeout, options.CallTimeout, options.BarrierTimeout,
                options.ParameterServerTransport))
            .ToArray();
        _encoder = new GradientEncoder(Ranges, elementCount, PartitionElements, dtype, topKRatio);
    }

    public IReadOnlyList<KeyRange> Ranges { get; }
    public int PartitionElements { get; }
    public DType Dtype { get; }

    /// <summary>Whether pushes are top-k sparse (their selection runs libtorch on the calling thread).</summary>
    public bool Sparse => _encoder.Sparse;

    /// <summary>
    /// Whether every server's pushes and pulls go over its data port, whose calls block the
    /// caller (<see cref="ParameterDataClient"/>) instead of awaiting gRPC streams.
    /// </summary>
    public bool Blocking => _servers.All(server => server.DataAddress is not null);

    /// <summary>
    /// The ranks behind the steps the last pull reported, as every server saw them: a rank counts
    /// in a step only when each server applied its push (parameter_server.proto, step 5).
    /// </summary>
    public AppliedSteps LastApplied()
    {
        var result = new AppliedSteps();
        foreach (var first in _servers[0].LastApplied.Steps)
        {
            var ranks = first.Ranks.Where(rank => _servers.All(server =>
                server.LastApplied.Steps.Any(s => s.Step == first.Step && s.Ranks.Contains(rank))));
            var step = new AppliedStep { Step = first.Step };
            step.Ranks.AddRange(ranks);
            if (_servers.All(server => server.LastApplied.Steps.Any(s => s.Step == first.Step))) result.Steps.Add(step);
        }
        return result;
    }

    /// <summary>
    /// A joining worker: becomes a member of every server's barrier from one step boundary none
    /// of them has passed; returns that step (parameter_server.proto, step 7).
    /// </summary>
    public async Task<long> JoinAsync(long version, CancellationToken cancellationToken)
    {
        long fromStep = version + 1;
        while (true)
        {
            var replies = await Task.WhenAll(_servers.Select(server => server.JoinRankAsync(_jobId, _rank, fromStep, cancellationToken)));
            if (replies.All(r => r.Joined)) return fromStep;
            fromStep = replies.Max(r => r.Version) + 1;
        }
    }

    /// <summary>Creates the job on every server (idempotent) with this rank's initial parameters; returns each server's version.</summary>
    public async Task<long[]> InitializeAsync(InitializeHeader template, float[] parameters, CancellationToken cancellationToken, TimeSpan? connectTimeout = null)
    {
        var replies = await Task.WhenAll(_servers.Select((server, k) =>
        {
            var header = template.Clone();
            header.RangeStart = Ranges[k].Start;
            header.RangeElements = Ranges[k].Length;
            header.PartitionElements = PartitionElements;
            return server.InitializeAsync(header, parameters.AsMemory((int)Ranges[k].Start, Ranges[k].Length), cancellationToken, connectTimeout);
        }));
        return [.. replies.Select(r => r.Version)];
    }

    /// <summary>Pulls version <paramref name="minVersion"/> (or later) of every range into <paramref name="parameters"/>.</summary>
    public Task PullAsync(long minVersion, float[] parameters, CancellationToken cancellationToken) =>
        Task.WhenAll(_servers.Select((server, k) => server.PullAsync(_jobId, minVersion, Dtype, RangeOf(parameters, k), cancellationToken)));

    /// <summary>Server <paramref name="k"/>'s key range of <paramref name="parameters"/>.</summary>
    private Memory<float> RangeOf(float[] parameters, int k) => parameters.AsMemory((int)Ranges[k].Start, Ranges[k].Length);

    /// <summary>
    /// Pushes the gradient of <paramref name="step"/> and pulls version step + 1 into
    /// <paramref name="parameters"/>, all servers at once; returns whether a server refused the
    /// gradient for NaN or Inf (the step went on without it). Each server's pull goes first, on a
    /// thread-pool thread, so that its request reaches the server before the push and the server
    /// sends the new version as soon as it is applied; the first server's push goes out on the
    /// calling thread. Over data ports (<see cref="Blocking"/>) a pull's calls block its thread
    /// until the version comes, and a push's calls block its thread until it is answered.
    /// <para>
    /// <paramref name="whenApplied"/>, when given, is called on the calling thread once the
    /// pushes are answered and every server's pull has said which ranks made up step
    /// <paramref name="step"/> (<see cref="LastApplied"/> then holds it), while the new version
    /// may still be on its way: a BSP worker leases its next shard there. It is not called when
    /// a pull ends without saying so first, nor when the pushes fail.
    /// </para>
    /// </summary>
    public async Task<bool> PushAndPullAsync(long step, int sampleCount, StepGradient gradient, float[] parameters, CancellationToken cancellationToken,
        Action? whenApplied = null)
    {
        var header = new PushHeader { JobId = _jobId, Rank = _rank, Step = step, SampleCount = sampleCount, Dtype = Dtype, Sparse = _encoder.Sparse };
        // A failed push cancels the pull: the version it waits for may never come (a server restarted at an older one).
        using var pullCancel = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var applied = whenApplied is null ? null : new AppliedCountdown(_servers.Length);
        Action? arrived = applied is null ? null : applied.Arrived;
        var pull = Task.WhenAll(_servers.Select((server, k) => Task.Run(() =>
            server.PullAsync(_jobId, step + 1, Dtype, RangeOf(parameters, k), pullCancel.Token, arrived), CancellationToken.None)));
        // The first server's push goes out on this thread, the others' meanwhile on the thread pool (over data ports each
        // blocks its thread until answered); top-k selection runs libtorch, so sparse pushes all go out here, in turn.
        var pushes = new Task<PushReply>[_servers.Length];
        for (int k = _servers.Length - 1; k >= 0; k--)
        {
            var (server, shard) = (_servers[k], k);
            Task<PushReply> Push() => server.PushAsync(header, _encoder.Encode(gradient, shard, server.ChunkBytes), cancellationToken);
            pushes[k] = k == 0 || Sparse ? Push() : Task.Run(Push, CancellationToken.None);
        }
        try
        {
            await Task.WhenAll(pushes);
        }
        catch
        {
            await pullCancel.CancelAsync();
            try { await pull; }
            catch (Exception e) when (e is OperationCanceledException or Grpc.Core.RpcException or Shared.Rpc.PeerUnreachableException or InvalidDataException) { }
            throw;
        }
        if (applied is not null && await Task.WhenAny(applied.Task, pull) == applied.Task) whenApplied!();
        await pull;
        return pushes.Any(p => p.Result.Rejected);
    }

    /// <summary>Completes once each of the servers' pulls has said which ranks made up the step.</summary>
    private sealed class AppliedCountdown(int servers)
    {
        private readonly TaskCompletionSource _all = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _left = servers;

        public Task Task => _all.Task;

        public void Arrived()
        {
            if (Interlocked.Decrement(ref _left) == 0) _all.TrySetResult();
        }
    }

    /// <summary>
    /// After a server was lost or restarted: waits (up to <paramref name="timeout"/>) until every
    /// server answers Initialize again (idempotent; a server restarted without a checkpoint takes
    /// <paramref name="initialParameters"/> at version 0), pulls the version they hold into
    /// <paramref name="parameters"/> and returns it: the step to train next.
    /// </summary>
    public async Task<long> RecoverAsync(InitializeHeader template, float[] initialParameters, float[] parameters, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var versions = await InitializeAsync(template, initialParameters, cancellationToken, timeout);
        long version = versions.Min();
        if (versions.Any(v => v != version))
            throw new InvalidOperationException(
                $"parameter servers: versions {string.Join(", ", versions)} after a restart; a job continues only when every server of it holds the same version");
        await PullAsync(version, parameters, cancellationToken);
        return version;
    }

    /// <summary>
    /// True for the failures a restarted or briefly lost server causes: unreachable, the stream
    /// broken, the job not (yet) held, or a push for a step the server is not at.
    /// </summary>
    public static bool IsServerLost(Exception e) => e switch
    {
        Shared.Rpc.PeerUnreachableException => true,
        Grpc.Core.RpcException r => r.StatusCode is Grpc.Core.StatusCode.Unavailable or Grpc.Core.StatusCode.Aborted
            or Grpc.Core.StatusCode.NotFound or Grpc.Core.StatusCode.Internal or Grpc.Core.StatusCode.Unknown,
        InvalidDataException d => d.Message.StartsWith("parameter server", StringComparison.Ordinal),
        // The connection dropped under a stream in flight (HttpIOException "response ended prematurely", resets).
        IOException or System.Net.Http.HttpRequestException => true,
        _ => false,
    };

    /// <summary>Each server's address and how pushes and pulls travel to it now, in words.</summary>
    public IEnumerable<(string Server, string Transport)> DescribeTransports() => _servers.Select(server => (server.Address, server.DescribeTransport()));

    /// <summary>When the last server acknowledged this rank's push (Stopwatch timestamp).</summary>
    public long PushesDoneTimestamp
    {
        get
        {
            long latest = 0;
            foreach (var server in _servers) latest = Math.Max(latest, server.LastPushDoneTimestamp);
            return latest;
        }
    }

    /// <summary>When every server had started sending the new version (Stopwatch timestamp): the end of the barrier wait.</summary>
    public long PullsStartedTimestamp
    {
        get
        {
            long latest = 0;
            foreach (var server in _servers) latest = Math.Max(latest, server.LastPullFirstChunkTimestamp);
            return latest;
        }
    }

    public void Dispose()
    {
        foreach (var server in _servers) server.Dispose();
    }
}
