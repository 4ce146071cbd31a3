using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Google.Protobuf;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// Ring all-reduce of one member over a flat float32 vector, in place: the sample-weighted mean
/// <c>sum_r n_r g_r / N</c> of every member's mean gradient <c>g_r</c> over its <c>n_r</c> samples
/// (the gradient of one batch made of every member's samples, as the parameter server's
/// StepAggregator computes it).
/// <para>
/// The vector is cut into buckets of at most <c>bucketElements</c>; each bucket into one segment
/// per member, and each segment into chunks of at most <see cref="TensorWire.ChunkBytesMax"/>.
/// Reduce-scatter: at ring step i member p sends segment (p - i) and adds the incoming segment
/// (p - i - 1) to its own; after size - 1 steps it holds segment (p + 1) summed over every member,
/// divides it by N and starts the all-gather, in which each member overwrites segment (p - i)
/// with the incoming one. Every chunk is forwarded as soon as it arrived (pipelined).
/// </para>
/// <para>
/// Determinism: each segment is summed exactly once, by its path around the ring, which depends
/// only on the positions; every member then receives that one sum. So the members end with
/// bitwise identical vectors, and the same inputs give the same result on every run.
/// </para>
/// <para>
/// Sends wrap the vector without copying. That is safe: a region is overwritten (all-gather) only
/// after its reduced value came back around the ring, which needs the successor to have consumed
/// every earlier message of this member.
/// </para>
/// </summary>
public sealed class RingAllReduce
{
    private const int ReduceScatter = 0, AllGather = 1;
    private readonly int _position, _size, _bucketElements, _chunkElements;

    /// <param name="chunkBytes">Largest message payload; at most <see cref="TensorWire.ChunkBytesMax"/>.</param>
    public RingAllReduce(int position, int size, int bucketBytes, int chunkBytes = TensorWire.ChunkBytesMax)
    {
        if (chunkBytes < sizeof(float) || chunkBytes > TensorWire.ChunkBytesMax)
            throw new ArgumentOutOfRangeException(nameof(chunkBytes), chunkBytes, $"expected 4 to {TensorWire.ChunkBytesMax}");
        _chunkElements = chunkBytes / sizeof(float);
        if (size <= 0 || position < 0 || position >= size)
            throw new ArgumentOutOfRangeException(nameof(position), $"position {position} of a ring of {size}");
        if (bucketBytes < sizeof(float))
            throw new ArgumentOutOfRangeException(nameof(bucketBytes), bucketBytes, "expected at least one element");
        (_position, _size, _bucketElements) = (position, size, bucketBytes / sizeof(float));
    }

    /// <summary>
    /// Replaces <paramref name="vector"/> (this member's mean gradient over <paramref name="sampleCount"/>
    /// samples) with the sample-weighted mean over the ring.
    /// </summary>
    public async Task ReduceAsync(IRingLink link, long step, Memory<byte> vector, int sampleCount, CancellationToken cancellationToken)
    {
        if (_size == 1) return;
        if (vector.Length % sizeof(float) != 0) throw new ArgumentException($"vector: {vector.Length} bytes is not whole float32 elements");
        Scale(vector, sampleCount);
        int elementCount = vector.Length / sizeof(float);
        int bucketCount = (elementCount + _bucketElements - 1) / _bucketElements;
        for (int bucket = 0; bucket < bucketCount; bucket++)
        {
            int start = bucket * _bucketElements;
            var span = new BucketSpan(bucket, start, Math.Min(_bucketElements, elementCount - start), _size, _chunkElements);
            await ReduceBucketAsync(link, step, span, vector, sampleCount, cancellationToken);
        }
    }

    private async Task ReduceBucketAsync(IRingLink link, long step, BucketSpan bucket, Memory<byte> vector, int sampleCount, CancellationToken cancellationToken)
    {
        int p = _position;
        foreach (var (offset, length) in bucket.Chunks(p))
            await link.SendAsync(Segment(step, bucket.Index, ReduceScatter, 0, sampleCount, vector, offset, length), cancellationToken);

        for (int i = 0; i < _size - 1; i++)
        {
            foreach (var (offset, length) in bucket.Chunks(Mod(p - i - 1)))
            {
                var incoming = await link.ReceiveAsync(cancellationToken);
                Check(incoming, step, bucket.Index, ReduceScatter, i, offset, length);
                long count = incoming.SampleCount + sampleCount;
                Accumulate(vector, offset, incoming.Chunk.Data.Span);
                var next = i < _size - 2
                    ? Segment(step, bucket.Index, ReduceScatter, i + 1, count, vector, offset, length)
                    : Finish(step, bucket.Index, vector, offset, length, count);
                await link.SendAsync(next, cancellationToken);
            }
        }

        for (int i = 0; i < _size - 1; i++)
        {
            foreach (var (offset, length) in bucket.Chunks(Mod(p - i)))
            {
                var incoming = await link.ReceiveAsync(cancellationToken);
                Check(incoming, step, bucket.Index, AllGather, i, offset, length);
                incoming.Chunk.Data.Span.CopyTo(vector.Span.Slice(offset * sizeof(float), length * sizeof(float)));
                if (i < _size - 2)
                    await link.SendAsync(Segment(step, bucket.Index, AllGather, i + 1, 0, vector, offset, length), cancellationToken);
            }
        }
    }

    /// <summary>The last reduce-scatter add made this chunk the full sum: divide by N and start its all-gather.</summary>
    private static RingSegment Finish(long step, int bucket, Memory<byte> vector, int offset, int length, long totalSamples)
    {
        if (totalSamples > 0)
        {
            var floats = MemoryMarshal.Cast<byte, float>(vector.Span).Slice(offset, length);
            TensorPrimitives.Divide(floats, totalSamples, floats);
        }
        return Segment(step, bucket, AllGather, 0, 0, vector, offset, length);
    }

    private static void Scale(Memory<byte> vector, int sampleCount)
    {
        var floats = MemoryMarshal.Cast<byte, float>(vector.Span);
        TensorPrimitives.Multiply(floats, sampleCount, floats);
    }

    private static void Accumulate(Memory<byte> vector, int offset, ReadOnlySpan<byte> incoming)
    {
        var local = MemoryMarshal.Cast<byte, float>(vector.Span).Slice(offset, incoming.Length / sizeof(float));
        TensorPrimitives.Add(local, MemoryMarshal.Cast<byte, float>(incoming), local);
    }

    private static RingSegment Segment(long step, int bucket, int phase, int ringStep, long sampleCount, Memory<byte> vector, int offset, int length) => new()
    {
        Step = step, Bucket = bucket, Phase = phase, RingStep = ringStep, SampleCount = sampleCount,
        Chunk = new TensorChunk
        {
            OffsetElements = offset,
            Data = UnsafeByteOperations.UnsafeWrap(vector.Slice(offset * sizeof(float), length * sizeof(float))),
        },
    };

    private static void Check(RingSegment segment, long step, int bucket, int phase, int ringStep, int offset, int length)
    {
        if (segment.Step != step || segment.Bucket != bucket || segment.Phase != phase || segment.RingStep != ringStep
            || segment.Chunk is null || segment.Chunk.OffsetElements != offset || segment.Chunk.Data.Length != length * sizeof(float))
            throw new RingBrokenException(
                $"ring: got step {segment.Step} bucket {segment.Bucket} phase {segment.Phase} ring step {segment.RingStep} offset {segment.Chunk?.OffsetElements} " +
                $"({segment.Chunk?.Data.Length} bytes); expected step {step} bucket {bucket} phase {phase} ring step {ringStep} offset {offset} ({length * sizeof(float)} bytes)");
        if (segment.SampleCount < 0) throw new RingBrokenException($"ring: sample_count {segment.SampleCount} is negative");
    }

    private int Mod(int k) => ((k % _size) + _size) % _size;

    /// <summary>One bucket [Start, Start + Length) of the vector, cut into <c>size</c> segments.</summary>
    private readonly record struct BucketSpan(int Index, int Start, int Length, int Size, int ChunkElements)
    {
        /// <summary>The chunks (offset in the vector, element count) of segment <paramref name="segment"/>.</summary>
        public IEnumerable<(int Offset, int Length)> Chunks(int segment)
        {
            int from = Start + (int)((long)Length * segment / Size);
            int to = Start + (int)((long)Length * (segment + 1) / Size);
            for (int offset = from; offset < to; offset += ChunkElements)
                yield return (offset, Math.Min(ChunkElements, to - offset));
        }
    }
}

/// <summary>A member's two neighbours in one ring generation: sends go to the successor, receives come from the predecessor, in order.</summary>
public interface IRingLink
{
    /// <summary>Queues a segment for the successor (its bytes must stay unchanged until it has been consumed).</summary>
    ValueTask SendAsync(RingSegment segment, CancellationToken cancellationToken);

    /// <summary>
    /// The predecessor's next segment; throws <see cref="RingBrokenException"/> when the predecessor
    /// is gone or silent too long. Its data may wrap the link's receive buffer: valid until the next call.
    /// </summary>
    ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken);
}

/// <summary>A generation's open link to both neighbours (gRPC or the data ports), which a member leaves or breaks.</summary>
public interface IRingConnection : IRingLink, IAsyncDisposable
{
    /// <summary>Marks the link broken, so that the break travels on around the ring.</summary>
    void Abort(string reason);
}

/// <summary>The ring of this generation cannot go on: a peer died, hung, or sent something unexpected.</summary>
public sealed class RingBrokenException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>How ring segments travel between neighbours.</summary>
public enum RingTransport
{
    /// <summary>Plain TCP (or TLS) connections between the ring data ports: the fast path.</summary>
    Tcp,
    /// <summary>The RingPeer.Stream gRPC call (HTTP/2).</summary>
    Grpc,
}
