using System.Runtime.InteropServices;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// Idempotent pushes: a push is identified by (job, rank, step, partition), and a worker that
/// lost a reply pushes the same step again. Partitions this rank already delivered for the step
/// are read into a scratch buffer and dropped, never written over a buffer that may be being
/// applied; a push the server has already fully received is acknowledged with the current
/// version and changes nothing.
/// </summary>
public sealed partial class JobParameters
{
    private float[]?[]? _scratch;                 // [rank]: where repeated partitions are read into
    private bool[]? _retrying;                    // [rank]: this call resends partitions already delivered

    /// <summary>Pushes acknowledged as duplicates of one already received (retries), never applied twice.</summary>
    public long DuplicatePushes { get; private set; }

    /// <summary>
    /// Under the lock: when <paramref name="step"/> repeats a push this rank has delivered whole,
    /// opens it as a duplicate and returns the scratch buffer to read it into; otherwise null.
    /// Under BSP a step below the current version was delivered by every rank; under SSP and ASP,
    /// a step below the rank's own count of applied pushes was delivered by it.
    /// </summary>
    private Memory<float>? TryBeginDuplicate(int rank, long step)
    {
        var push = _ranks[rank];
        long current = ExpectedStep(rank);
        bool delivered = (step >= 0 && step < current) || (step == current && push.Step == step && push.Delivered == PartitionCount);
        if (!delivered) return null;
        push.Open = true;
        push.Duplicate = true;
        return Scratch(rank);
    }

    /// <summary>Under the lock: a retry of a partly delivered push reads into scratch; new partitions are copied over.</summary>
    private Memory<float> RetryBuffer(int rank)
    {
        (_retrying ??= new bool[WorldSize])[rank] = true;
        return Scratch(rank);
    }

    /// <summary>Under the lock: partition <paramref name="partition"/> arrived for the first time in a retry.</summary>
    private void CopyRetriedPartition(int rank, int partition)
    {
        if (_retrying is null || !_retrying[rank]) return;
        // Byte for byte, in whatever form the rank's buffer holds (a retry keeps the push's wire type: BeginPush).
        int elementBytes = ElementCodec.ElementBytes(_aggregator.Encoding(rank));
        int start = PartitionStart(partition) * elementBytes, length = PartitionLength(partition) * elementBytes;
        MemoryMarshal.AsBytes(_scratch![rank].AsSpan()).Slice(start, length).CopyTo(MemoryMarshal.AsBytes(_aggregator.BufferFor(rank).Span).Slice(start, length));
    }

    /// <summary>Under the lock: closes a duplicate push; returns the version the server holds.</summary>
    private long DuplicateCompleted(int rank)
    {
        _ranks[rank].Duplicate = false;
        DuplicatePushes++;
        return Version;
    }

    /// <summary>Under the lock: the call ends; returns false (no duplicate open any more).</summary>
    private bool EndRetry(int rank)
    {
        if (_retrying is not null) _retrying[rank] = false;
        return false;
    }

    private Memory<float> Scratch(int rank) => (_scratch ??= new float[]?[WorldSize])[rank] ??= new float[ElementCount];

    /// <summary>A push for a step this server is not at: the worker resynchronises with the version named.</summary>
    private PushRejectedException StepMismatch(int rank, long step)
    {
        long current = ExpectedStep(rank);
        string message = $"step: {step} is not the current step {current} of job {JobId}" + (IsAsync ? $" for rank {rank}" : "");
        return step > current ? new StepMismatchException(message, Version) : new PushRejectedException(message);
    }
}

/// <summary>A push for a step other than the server's version (for example after the server restarted from a checkpoint).</summary>
public sealed class StepMismatchException(string message, long serverVersion) : PushRejectedException(message)
{
    public long ServerVersion { get; } = serverVersion;
}
