using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.ParameterServer.Services;

/// <summary>gRPC adapter over <see cref="ParameterStore"/> (see parameter_server.proto for the sequence).</summary>
public sealed class ParameterServerService(ParameterStore store, ParameterServerOptions options) : Protos.ParameterServer.ParameterServerBase
{
    private const int LayoutTensorsMax = 1 << 16;
    private const int NameLengthMax = 1024;

    public override async Task<InitializeReply> Initialize(IAsyncStreamReader<InitializeMessage> requestStream, ServerCallContext context)
    {
        var header = await ReadHeaderAsync(requestStream, m => m.BodyCase == InitializeMessage.BodyOneofCase.Header ? m.Header : null, context);
        var errors = ValidateHeader(header).ToList();
        if (errors.Count > 0) throw Invalid(string.Join("; ", errors));
        long elementCount;
        try { elementCount = ParameterStore.ElementCount(header.Layout); }
        catch (ArgumentException e) { throw Invalid(e.Message); }
        if (elementCount * sizeof(float) > options.ModelBytesMax)
            throw Exhausted($"layout: {elementCount} float32 elements ({elementCount * sizeof(float)} bytes) exceed this server's limit of {options.ModelBytesMax} bytes per job");
        // Weights, two optimizer moments, the combined gradient and one receive buffer per rank.
        if ((double)elementCount * sizeof(float) * (header.WorldSize + 4) > options.JobMemoryBytesMax)
            throw Exhausted($"world_size: {header.WorldSize} ranks of {elementCount * sizeof(float)} bytes each exceed this server's limit of {options.JobMemoryBytesMax} bytes of memory per job");

        var existing = store.Find(header.JobId);
        if (existing is null && store.Jobs.Count >= options.JobsMax)
            throw Exhausted($"job_id: '{header.JobId}' refused; this server already holds {store.Jobs.Count} jobs (the limit)");
        if (existing is not null)
        {
            // Drain the stream: the first Initialize already set the weights.
            while (await requestStream.MoveNext(context.CancellationToken)) { }
            if (existing.ElementCount != elementCount)
                throw new RpcException(new Status(StatusCode.FailedPrecondition,
                    $"job {header.JobId}: already holds {existing.ElementCount} elements; this layout has {elementCount}"));
            return new InitializeReply { Created = false, Version = existing.Version };
        }

        var weights = new byte[elementCount * sizeof(float)];
        long received = await ReadChunksAsync(requestStream, m => m.Chunk, weights, context);
        if (received != elementCount)
            throw Invalid($"chunks: {received} elements received; the layout has {elementCount}");
        try
        {
            var (job, created) = store.GetOrCreate(header, weights);
            return new InitializeReply { Created = created, Version = job.Version };
        }
        catch (ArgumentException e) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
    }

    public override async Task<PushReply> PushGradients(IAsyncStreamReader<PushMessage> requestStream, ServerCallContext context)
    {
        var header = await ReadHeaderAsync(requestStream, m => m.BodyCase == PushMessage.BodyOneofCase.Header ? m.Header : null, context);
        var job = store.Find(header.JobId) ?? throw new RpcException(new Status(StatusCode.NotFound, $"job_id: '{header.JobId}' is not initialised on this server"));
        if (header.Dtype != DType.Float32) throw Invalid($"dtype: {header.Dtype}; expected DTYPE_FLOAT32");
        if (header.SampleCount is < 0 or > Shared.Jobs.JobSpecification.BatchSizeMax)
            throw Invalid($"sample_count: {header.SampleCount}; expected 0 to {Shared.Jobs.JobSpecification.BatchSizeMax}");
        Memory<byte> buffer;
        try { buffer = job.BeginPush(header.Rank, header.Step); }
        catch (PushRejectedException e) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
        try
        {
            long received = await ReadChunksAsync(requestStream, m => m.Chunk, buffer, context);
            if (received != job.ElementCount)
                throw Invalid($"chunks: {received} elements received; job {job.JobId} has {job.ElementCount}");
            return new PushReply { Version = job.CompletePush(header.Rank, header.Step, header.SampleCount) };
        }
        catch (PushRejectedException e)
        {
            job.AbortPush(header.Rank);
            throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message));
        }
        catch
        {
            job.AbortPush(header.Rank);
            throw;
        }
    }

    public override async Task PullParameters(PullRequest request, IServerStreamWriter<PullMessage> responseStream, ServerCallContext context)
    {
        var job = store.Find(request.JobId) ?? throw new RpcException(new Status(StatusCode.NotFound, $"job_id: '{request.JobId}' is not initialised on this server"));
        await job.WaitForVersionAsync(request.MinVersion, context.CancellationToken);
        await responseStream.WriteAsync(new PullMessage
        {
            Header = new PullHeader { Version = job.Version, ElementCount = job.ElementCount, Dtype = DType.Float32 },
        });
        foreach (var chunk in TensorWire.Chunks(job.Weights))
            await responseStream.WriteAsync(new PullMessage { Chunk = chunk });
    }

    public override Task<FinishReply> Finish(FinishRequest request, ServerCallContext context) =>
        Task.FromResult(new FinishReply { Removed = store.Remove(request.JobId) });

    private static IEnumerable<string> ValidateHeader(InitializeHeader header)
    {
        if (header.JobId.Length == 0) yield return "job_id: empty; expected the coordinator's job id";
        if (header.JobId.Length > NameLengthMax) yield return $"job_id: {header.JobId.Length} characters; expected at most {NameLengthMax}";
        if (header.WorldSize is <= 0 or > Shared.Jobs.JobSpecification.WorkersMax)
            yield return $"world_size: {header.WorldSize}; expected 1 to {Shared.Jobs.JobSpecification.WorkersMax}";
        if (header.Layout is null) yield return "layout: missing";
        else if (header.Layout.Tensors.Count > LayoutTensorsMax)
            yield return $"layout: {header.Layout.Tensors.Count} tensors; expected at most {LayoutTensorsMax}";
        else if (header.Layout.Tensors.Any(t => t.Name.Length > NameLengthMax || t.Shape.Count > 32))
            yield return $"layout: a tensor name longer than {NameLengthMax} characters or more than 32 dimensions";
        if (header.Dtype != DType.Float32) yield return $"dtype: {header.Dtype}; expected DTYPE_FLOAT32";
        if (header.Optimizer is null) { yield return "optimizer: missing"; yield break; }
        foreach (string error in OptimizerSettings.FromProto(header.Optimizer).Validate()) yield return error;
    }

    private static async Task<THeader> ReadHeaderAsync<TMessage, THeader>(
        IAsyncStreamReader<TMessage> stream, Func<TMessage, THeader?> header, ServerCallContext context)
        where THeader : class
    {
        if (!await stream.MoveNext(context.CancellationToken))
            throw Invalid("stream: empty; expected a header first");
        return header(stream.Current) ?? throw Invalid("stream: the first message is not a header");
    }

    private static async Task<long> ReadChunksAsync<TMessage>(
        IAsyncStreamReader<TMessage> stream, Func<TMessage, TensorChunk?> chunk, Memory<byte> destination, ServerCallContext context)
    {
        long received = 0;
        while (await stream.MoveNext(context.CancellationToken))
        {
            var next = chunk(stream.Current) ?? throw Invalid("stream: a second header; expected chunks after the header");
            try { received = TensorWire.CopyNextChunk(next, destination.Span, received); }
            catch (InvalidDataException e) { throw Invalid(e.Message); }
        }
        return received;
    }

    private static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    private static RpcException Exhausted(string message) => new(new Status(StatusCode.ResourceExhausted, message));
}
