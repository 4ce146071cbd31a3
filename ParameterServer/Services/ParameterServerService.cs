using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.ParameterServer.Services;

/// <summary>
/// gRPC adapter over <see cref="ParameterStore"/> (see parameter_server.proto for the sequence);
/// pushes and pulls go through <see cref="ParameterTraffic"/>, as on the data port.
/// </summary>
public sealed class ParameterServerService(ParameterStore store, ParameterServerOptions options, DataPort.ParameterDataPort? dataPort = null)
    : Protos.ParameterServer.ParameterServerBase
{
    private readonly ParameterTraffic _traffic = new(store);

    private const int LayoutTensorsMax = 1 << 16;
    private const int NameLengthMax = 1024;

    public override async Task<InitializeReply> Initialize(IAsyncStreamReader<InitializeMessage> requestStream, ServerCallContext context)
    {
        var header = await ReadHeaderAsync(requestStream, m => m.BodyCase == InitializeMessage.BodyOneofCase.Header ? m.Header : null, context);
        var errors = ValidateHeader(header).ToList();
        if (errors.Count > 0) throw Invalid(string.Join("; ", errors));
        long rangeBytes = header.RangeElements * sizeof(float);
        if (rangeBytes > options.ModelBytesMax)
            throw Exhausted($"range_elements: {header.RangeElements} float32 elements ({rangeBytes} bytes) exceed this server's limit of {options.ModelBytesMax} bytes per job");
        // Weights, two optimizer moments, the combined gradient and one receive buffer per rank.
        if ((double)rangeBytes * (header.WorldSize + 4) > options.JobMemoryBytesMax)
            throw Exhausted($"world_size: {header.WorldSize} ranks of {rangeBytes} bytes each exceed this server's limit of {options.JobMemoryBytesMax} bytes of memory per job");

        var existing = store.Find(header.JobId);
        if (existing is null && store.Jobs.Count >= options.JobsMax)
            throw Exhausted($"job_id: '{header.JobId}' refused; this server already holds {store.Jobs.Count} jobs (the limit)");
        if (existing is not null)
        {
            // Drain the stream: the first Initialize already set the weights.
            while (await requestStream.MoveNext(context.CancellationToken)) { }
            if (existing.ElementCount != header.RangeElements || existing.RangeStart != header.RangeStart)
                throw new RpcException(new Status(StatusCode.FailedPrecondition,
                    $"job {header.JobId}: already holds elements [{existing.RangeStart}, {existing.RangeStart + existing.ElementCount}); this Initialize is for [{header.RangeStart}, {header.RangeStart + header.RangeElements})"));
            return new InitializeReply { Created = false, Version = existing.Version, DataAddress = dataPort?.Address ?? "" };
        }

        var weights = new float[header.RangeElements];
        long received = 0;
        while (await requestStream.MoveNext(context.CancellationToken))
        {
            var chunk = requestStream.Current.Chunk ?? throw Invalid("stream: a second header; expected chunks after the header");
            received = Guard(() => ChunkReader.ReadDense(chunk, header.Dtype, weights, received));
        }
        if (received != header.RangeElements)
            throw Invalid($"chunks: {received} elements received; range_elements is {header.RangeElements}");
        try
        {
            var (job, created) = store.GetOrCreate(header, weights);
            return new InitializeReply { Created = created, Version = job.Version, DataAddress = dataPort?.Address ?? "" };
        }
        catch (ArgumentException e) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
    }

    public override Task<PushReply> PushGradients(IAsyncStreamReader<PushMessage> requestStream, ServerCallContext context) =>
        PushAsync(requestStream, context);

    private async Task<PushReply> PushAsync(IAsyncStreamReader<PushMessage> requestStream, ServerCallContext context)
    {
        var header = await ReadHeaderAsync(requestStream, m => m.BodyCase == PushMessage.BodyOneofCase.Header ? m.Header : null, context);
        return await _traffic.PushAsync(header, new GrpcPushSource(requestStream), context.CancellationToken);
    }

    /// <summary>A push over gRPC: each message after the header is a chunk.</summary>
    private sealed class GrpcPushSource(IAsyncStreamReader<PushMessage> stream) : IPushSource
    {
        public async ValueTask<long?> ReadNextAsync(PushHeader header, Memory<float> destination, long received, CancellationToken cancellationToken)
        {
            if (!await stream.MoveNext(cancellationToken)) return null;
            var chunk = stream.Current.Chunk ?? throw Invalid("stream: a second header; expected chunks after the header");
            return CallErrors.Decode(header, chunk, destination.Span, received);
        }
    }

    public override Task PullParameters(PullRequest request, IServerStreamWriter<PullMessage> responseStream, ServerCallContext context) =>
        _traffic.PullAsync(request, new GrpcPullSink(responseStream), context.CancellationToken);

    /// <summary>
    /// A pull over gRPC: 64 KiB chunks wrapping the partition's memory; each message is
    /// serialised before WriteAsync completes. The call's own cancellation applies (the
    /// writer does not take a token: its WriteAsync(message, token) throws NotSupported).
    /// </summary>
    private sealed class GrpcPullSink(IServerStreamWriter<PullMessage> stream) : IPullSink
    {
        public async ValueTask WriteHeaderAsync(PullHeader header, CancellationToken cancellationToken) =>
            await stream.WriteAsync(new PullMessage { Header = header }, CancellationToken.None);

        public async ValueTask WritePartitionAsync(long firstElement, ReadOnlyMemory<byte> elements, int elementBytes, CancellationToken cancellationToken)
        {
            foreach (var chunk in TensorWire.Chunks(elements, firstElement, elementBytes))
                await stream.WriteAsync(new PullMessage { Chunk = chunk }, CancellationToken.None);
        }

        public async ValueTask WriteAppliedAsync(AppliedSteps applied, CancellationToken cancellationToken) =>
            await stream.WriteAsync(new PullMessage { Applied = applied }, CancellationToken.None);
    }

    public override Task<RemoveRankReply> RemoveRank(RemoveRankRequest request, ServerCallContext context)
    {
        long? until = FindJob(request.JobId).RemoveRank(request.Rank);
        return Task.FromResult(new RemoveRankReply { Removed = until is not null, UntilStep = until ?? 0 });
    }

    public override Task<JoinRankReply> JoinRank(JoinRankRequest request, ServerCallContext context)
    {
        var job = FindJob(request.JobId);
        var (joined, version) = Rejected(() => job.JoinRank(request.Rank, request.FromStep));
        return Task.FromResult(new JoinRankReply { Joined = joined, Version = version });
    }

    public override Task<FinishReply> Finish(FinishRequest request, ServerCallContext context) =>
        Task.FromResult(new FinishReply { Removed = store.Remove(request.JobId) });

    private JobParameters FindJob(string jobId) => _traffic.FindJob(jobId);

    private static IEnumerable<string> ValidateHeader(InitializeHeader header)
    {
        if (header.JobId.Length == 0) yield return "job_id: empty; expected the coordinator's job id";
        if (header.JobId.Length > NameLengthMax) yield return $"job_id: {header.JobId.Length} characters; expected at most {NameLengthMax}";
        if (header.WorldSize is <= 0 or > Shared.Jobs.JobSpecification.WorkersMax)
            yield return $"world_size: {header.WorldSize}; expected 1 to {Shared.Jobs.JobSpecification.WorkersMax}";
        if (header.Layout is null) { yield return "layout: missing"; yield break; }
        if (header.Layout.Tensors.Count > LayoutTensorsMax)
        {
            yield return $"layout: {header.Layout.Tensors.Count} tensors; expected at most {LayoutTensorsMax}";
            yield break;
        }
        if (header.Layout.Tensors.Any(t => t.Name.Length > NameLengthMax || t.Shape.Count > 32))
            yield return $"layout: a tensor name longer than {NameLengthMax} characters or more than 32 dimensions";
        long modelElements;
        string? layoutError = null;
        try { modelElements = ParameterStore.ElementCount(header.Layout); }
        catch (ArgumentException e) { modelElements = 0; layoutError = e.Message; }
        if (layoutError is not null) { yield return layoutError; yield break; }
        if (header.RangeStart < 0 || header.RangeElements <= 0 || header.RangeStart > modelElements - header.RangeElements)
            yield return $"range_start, range_elements: [{header.RangeStart}, {header.RangeStart + header.RangeElements}) is not a range of the model's {modelElements} elements";
        if (header.PartitionElements < 0) yield return $"partition_elements: {header.PartitionElements}; expected 0 (default) or more";
        if (header.Dtype is not (DType.Float32 or DType.Bfloat16 or DType.Float16)) yield return $"dtype: {header.Dtype}; expected a known element type";
        if (header.Sync is not ("" or JobParameters.Bsp or JobParameters.Ssp or JobParameters.Asp))
            yield return $"sync: '{header.Sync}'; expected bsp, ssp or asp";
        if (header.Staleness is < 0 or > Shared.Jobs.JobSpecification.StalenessMax)
            yield return $"staleness: {header.Staleness}; expected 0 to {Shared.Jobs.JobSpecification.StalenessMax}";
        if (header.Optimizer is null) { yield return "optimizer: missing"; yield break; }
        foreach (string error in OptimizerSettings.FromProto(header.Optimizer).Validate()) yield return error;
        foreach (string error in ValidateGroups(header, modelElements)) yield return error;
    }

    private const int ParameterGroupsMax = 1024;

    private static IEnumerable<string> ValidateGroups(InitializeHeader header, long modelElements)
    {
        if (header.Groups.Count > ParameterGroupsMax)
            return [$"groups: {header.Groups.Count} groups; expected at most {ParameterGroupsMax}"];
        if (header.Groups.FirstOrDefault(g => g.Optimizer is null || g.Name.Length > NameLengthMax) is { } bad)
            return [$"groups.{bad.Name[..Math.Min(bad.Name.Length, NameLengthMax)]}: optimizer missing or name longer than {NameLengthMax} characters"];
        return OptimizerGroups.Validate([.. header.Groups.Select(OptimizerGroup.FromProto)], modelElements);
    }

    private static async Task<THeader> ReadHeaderAsync<TMessage, THeader>(
        IAsyncStreamReader<TMessage> stream, Func<TMessage, THeader?> header, ServerCallContext context)
        where THeader : class
    {
        if (!await stream.MoveNext(context.CancellationToken))
            throw Invalid("stream: empty; expected a header first");
        return header(stream.Current) ?? throw Invalid("stream: the first message is not a header");
    }

    private static T Guard<T>(Func<T> read) => CallErrors.Guard(read);

    private static T Rejected<T>(Func<T> action) => CallErrors.Rejected(action);

    private static RpcException Invalid(string message) => CallErrors.Invalid(message);

    private static RpcException Exhausted(string message) => CallErrors.Exhausted(message);
}
