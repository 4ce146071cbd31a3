using System.Buffers;
using System.Runtime.InteropServices;
using Cluster.ParameterServer.Aggregation;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.ParameterServer.Services;

/// <summary>Where a pull's messages go: a gRPC response stream or a data-port connection.</summary>
public interface IPullSink
{
    ValueTask WriteHeaderAsync(PullHeader header, CancellationToken cancellationToken);
    /// <summary>
    /// One partition's elements (<paramref name="elementBytes"/> each), the first at <paramref name="firstElement"/>; the sink
    /// cuts them into chunks. The caller keeps <paramref name="elements"/> unchanged until the returned task completes.
    /// </summary>
    ValueTask WritePartitionAsync(long firstElement, ReadOnlyMemory<byte> elements, int elementBytes, CancellationToken cancellationToken);
    /// <summary>The ranks behind the steps applied; sent at once (not held back with the chunks that follow).</summary>
    ValueTask WriteAppliedAsync(AppliedSteps applied, CancellationToken cancellationToken);
}

/// <summary>Where a push's chunks come from: a gRPC request stream or a data-port connection.</summary>
public interface IPushSource
{
    /// <summary>
    /// Reads the next chunk into <paramref name="destination"/> in the form
    /// <see cref="StepAggregator.StoredAs"/> gives for the header (float32 values, or a dense 2-byte
    /// wire type's elements as they came, packed from the start of the buffer's bytes), checked as
    /// ChunkReader checks (malformed content is an InvalidArgument <see cref="RpcException"/>);
    /// returns the elements received so far, or null at the end of the push.
    /// </summary>
    ValueTask<long?> ReadNextAsync(PushHeader header, Memory<float> destination, long received, CancellationToken cancellationToken);
}

/// <summary>
/// PushGradients and PullParameters (parameter_server.proto, steps 3 and 5), whatever carries
/// them: the gRPC service and the data port both call these, so that deduplication, whole-push
/// application, NaN/Inf rejection and AppliedSteps are one code path. Failures are
/// <see cref="RpcException"/>s with the status the gRPC handler answers; the data port sends
/// them on as error frames.
/// </summary>
public sealed class ParameterTraffic(ParameterStore store)
{
    /// <summary>
    /// One worker's gradient for one step: the header, then its chunks in order. With
    /// <paramref name="callerApplies"/>, the caller must call <see cref="ApplyQueued"/> after
    /// answering, whatever happened: a step this push completes is applied from there (see
    /// <see cref="JobParameters.Received"/>).
    /// </summary>
    public async Task<PushReply> PushAsync(PushHeader header, IPushSource chunks, CancellationToken cancellationToken, bool callerApplies = false)
    {
        var job = FindJob(header.JobId);
        if (header.SampleCount is < 0 or > Shared.Jobs.JobSpecification.BatchSizeMax)
            throw CallErrors.Invalid($"sample_count: {header.SampleCount}; expected 0 to {Shared.Jobs.JobSpecification.BatchSizeMax}");
        CallErrors.Guard(() => ElementCodec.ElementBytes(header.Dtype));
        var buffer = CallErrors.Rejected(() => job.BeginPush(header.Rank, header.Step, header.SampleCount, StepAggregator.StoredAs(header.Dtype, header.Sparse)));
        try
        {
            long received = 0;
            while (await chunks.ReadNextAsync(header, buffer, received, cancellationToken) is { } total)
            {
                received = total;
                job.Received(header.Rank, (int)received, callerApplies);
            }
            if (received != job.ElementCount)
                throw CallErrors.Invalid($"chunks: {received} elements received; job {job.JobId} has {job.ElementCount}");
            try { return new PushReply { Version = CallErrors.Rejected(() => job.CompletePush(header.Rank)) }; }
            catch (NonFiniteGradientException)
            {
                // Counted and left out of the step; the worker goes on with the next one.
                return new PushReply { Version = job.Version, Rejected = true };
            }
        }
        catch
        {
            job.AbortPush(header.Rank);
            throw;
        }
    }

    /// <summary>
    /// Applies on the caller's thread what pushes of job <paramref name="jobId"/> queued and no
    /// applier has taken yet, after waking the appliers a push of this caller left to it
    /// (<see cref="JobParameters.ApplyQueuedPartitions"/>); for a thread that has just answered a
    /// push, and would otherwise go to sleep.
    /// </summary>
    public void ApplyQueued(string jobId) => store.Find(jobId)?.ApplyQueuedPartitions();

    /// <summary>
    /// Streams each partition as soon as it reaches min_version. From version 1 on the pull also
    /// says which ranks made up the steps applied: under BSP before the partitions, as soon as
    /// every push of step min_version - 1 is complete (the step is then certain to be applied
    /// with exactly those ranks, and the worker can lease its next shard while the partitions are
    /// still being applied and sent); under SSP and ASP at the end.
    /// </summary>
    public async Task PullAsync(PullRequest request, IPullSink sink, CancellationToken cancellationToken)
    {
        var job = FindJob(request.JobId);
        int elementBytes = CallErrors.Guard(() => ElementCodec.ElementBytes(request.Dtype));
        await sink.WriteHeaderAsync(new PullHeader { Version = request.MinVersion, ElementCount = job.ElementCount, Dtype = request.Dtype }, cancellationToken);
        bool appliedFirst = job.SyncMode == JobParameters.Bsp;
        if (request.MinVersion > 0 && appliedFirst)
        {
            await job.WaitForStepCompleteAsync(request.MinVersion - 1, cancellationToken);
            await sink.WriteAppliedAsync(AppliedSteps(job, request.MinVersion - 1), cancellationToken);
        }
        // bf16/fp16: sent from the job's pull copy once the applier keeps one; until then (and for a
        // partition the copy does not hold), encoded here into two buffers in turn, so that a
        // partition is encoded while the one before it is still being written.
        job.KeepPullCopy(request.Dtype);
        byte[][] encoded = request.Dtype == DType.Float32 ? [] : [Rent(job, elementBytes), Rent(job, elementBytes)];
        ValueTask writing = ValueTask.CompletedTask;
        try
        {
            for (int p = 0; p < job.PartitionCount; p++)
            {
                await job.WaitForPartitionAsync(p, request.MinVersion, cancellationToken);
                var weights = job.Partition(p);
                ReadOnlyMemory<byte> bytes = FloatMemory.AsBytes(weights);
                if (encoded.Length > 0 && job.PullCopyOf(p, request.Dtype) is { } copy) bytes = copy;
                else if (encoded.Length > 0)
                {
                    // This buffer's last partition (p - 2) was written before partition p - 1's write began.
                    var buffer = encoded[p % 2];
                    ElementCodec.Encode(weights.Span, buffer, request.Dtype);
                    bytes = buffer.AsMemory(0, weights.Length * elementBytes);
                }
                await Finish(ref writing);
                writing = sink.WritePartitionAsync(job.PartitionStart(p), bytes, elementBytes, cancellationToken);
            }
            await Finish(ref writing);
        }
        finally
        {
            // Only a failed pull leaves a write in flight; it reads its buffer until it ends, and the pull's own failure is what counts.
            try { await writing; }
            catch (Exception) { }
            foreach (var buffer in encoded) ArrayPool<byte>.Shared.Return(buffer);
        }
        if (request.MinVersion > 0 && !appliedFirst) await sink.WriteAppliedAsync(AppliedSteps(job, request.MinVersion - 1), cancellationToken);
    }

    /// <summary>The write to wait for, leaving a completed one in its place (a ValueTask is awaited once).</summary>
    private static ValueTask Finish(ref ValueTask writing)
    {
        var pending = writing;
        writing = ValueTask.CompletedTask;
        return pending;
    }

    private static byte[] Rent(JobParameters job, int elementBytes) => ArrayPool<byte>.Shared.Rent(job.PartitionElements * elementBytes);

    /// <summary>The ranks behind the steps up to <paramref name="throughStep"/> (parameter_server.proto, step 5).</summary>
    private static AppliedSteps AppliedSteps(JobParameters job, long throughStep)
    {
        var applied = new AppliedSteps();
        foreach (var (step, ranks) in job.AppliedSteps(throughStep))
        {
            var entry = new AppliedStep { Step = step };
            entry.Ranks.AddRange(ranks);
            applied.Steps.Add(entry);
        }
        return applied;
    }

    public JobParameters FindJob(string jobId) =>
        store.Find(jobId) ?? throw new RpcException(new Status(StatusCode.NotFound, $"job_id: '{jobId}' is not initialised on this server"));
}

/// <summary>How the handlers' failures become gRPC statuses.</summary>
public static class CallErrors
{
    /// <summary>
    /// A received chunk read into place (<see cref="ChunkReader"/>) in the form the push is stored
    /// in (<see cref="IPushSource"/>), malformed content → InvalidArgument.
    /// </summary>
    public static long Decode(PushHeader header, TensorChunk chunk, Span<float> destination, long received)
    {
        try
        {
            if (header.Sparse) return ChunkReader.ReadSparse(chunk, header.Dtype, destination, received);
            var stored = StepAggregator.StoredAs(header.Dtype, header.Sparse);
            return stored == DType.Float32
                ? ChunkReader.ReadDense(chunk, header.Dtype, destination, received)
                : ChunkReader.ReadDenseEncoded(chunk, stored, MemoryMarshal.AsBytes(destination)[..(destination.Length * ElementCodec.ElementBytes(stored))], received);
        }
        catch (InvalidDataException e) { throw Invalid(e.Message); }
    }

    /// <summary>Malformed input → InvalidArgument naming the field.</summary>
    public static T Guard<T>(Func<T> read)
    {
        try { return read(); }
        catch (InvalidDataException e) { throw Invalid(e.Message); }
    }

    /// <summary>A push that does not fit the job's state → Aborted (another step) or FailedPrecondition.</summary>
    public static T Rejected<T>(Func<T> action)
    {
        try { return action(); }
        catch (StepMismatchException e) { throw new RpcException(new Status(StatusCode.Aborted, e.Message)); }
        catch (PushRejectedException e) when (e is not NonFiniteGradientException) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
    }

    public static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    public static RpcException Exhausted(string message) => new(new Status(StatusCode.ResourceExhausted, message));
}
