using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// The weights as bfloat16 or float16, kept for pulls of that type: the applier writes each block
/// into the copy while the block is in cache, right after updating it, so a pull sends the copy as
/// it is instead of reading the partition again to encode it. Made once the first pull asks for a
/// 2-byte type (BSP jobs only, and ranges that fit one array). A partition's copy is used only
/// while it holds the partition's current version in the type asked for; otherwise the pull
/// encodes as before. The copy of a partition at version t is written only when the partition
/// moves to t + 1, which the class remarks show no rank's pull of version t can overlap.
/// </summary>
public sealed partial class JobParameters
{
    private byte[]? _pullCopy;
    private volatile DType _pullCopyType = DType.Float32;  // Float32: no copy kept
    private long[]? _copyVersions;                          // [partition]: the version the copy holds (under _gate)
    private DType[]? _copyTypes;                            // [partition]: the type it holds it in (under _gate)

    /// <summary>A pull asked for <paramref name="dtype"/>: from the next partition applied on, keep the copy in that type.</summary>
    public void KeepPullCopy(DType dtype)
    {
        if (dtype == DType.Float32 || IsAsync || _pullCopyType == dtype) return;
        if ((long)ElementCount * ElementCodec.ElementBytes(dtype) > Array.MaxLength) return;  // pulls encode as they go
        lock (_gate)
        {
            _pullCopy ??= new byte[(long)ElementCount * ElementCodec.ElementBytes(dtype)];
            _copyVersions ??= Enumerable.Repeat(-1L, PartitionCount).ToArray();
            _copyTypes ??= new DType[PartitionCount];
            _pullCopyType = dtype;
        }
    }

    /// <summary>
    /// Partition <paramref name="partition"/> as <paramref name="dtype"/> elements from the copy,
    /// when the copy holds its current version in that type; null otherwise.
    /// </summary>
    public ReadOnlyMemory<byte>? PullCopyOf(int partition, DType dtype)
    {
        lock (_gate)
        {
            if (_pullCopy is null || _copyTypes![partition] != dtype || _copyVersions![partition] != _partitionVersions[partition]) return null;
        }
        int elementBytes = ElementCodec.ElementBytes(dtype);
        return _pullCopy.AsMemory(PartitionStart(partition) * elementBytes, PartitionLength(partition) * elementBytes);
    }

    /// <summary>The type the applier keeps the copy in for the partition it starts now (Float32: none).</summary>
    private DType PullCopyType => _pullCopy is null ? DType.Float32 : _pullCopyType;

    /// <summary>Elements [offset, offset + length) of the copy, as <paramref name="dtype"/> elements.</summary>
    private Span<byte> PullCopyBytes(int offset, int length, DType dtype)
    {
        int elementBytes = ElementCodec.ElementBytes(dtype);
        return _pullCopy.AsSpan(offset * elementBytes, length * elementBytes);
    }

    /// <summary>Under the lock, as partition <paramref name="partition"/> reaches <paramref name="version"/>: what its copy now holds.</summary>
    private void PullCopyReached(int partition, long version, DType dtype)
    {
        if (_copyVersions is null) return;
        (_copyVersions[partition], _copyTypes![partition]) = dtype == DType.Float32 ? (-1, DType.Float32) : (version, dtype);
    }
}
