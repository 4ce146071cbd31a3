using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Sharding;
using Cluster.Shared.Wire;
using Google.Protobuf;
using TorchSharp;

namespace Cluster.Worker.Training;

/// <summary>
/// Turns a step's float32 gradient into the chunks each parameter server receives: float32
/// wraps the gradient buffer (no copy); bfloat16 / float16 encode each chunk as it is taken into
/// one of two chunk buffers kept per server, which stay in cache while the socket copies them;
/// top-k sends, per partition, only the largest-magnitude fraction of (gradient + residual) as
/// indices and values, and keeps what it did not send as the residual for the next step
/// (error feedback), so no part of the gradient is lost for good.
/// </summary>
public sealed class GradientEncoder
{
    private readonly IReadOnlyList<KeyRange> _ranges;
    private readonly int _partitionElements;
    private readonly DType _dtype;
    private readonly double _topKRatio;
    private readonly byte[][][]? _chunkBuffers;  // [server][0 or 1]: dense bfloat16 / float16 chunks, used in turn
    private readonly float[]? _residual;

    public GradientEncoder(IReadOnlyList<KeyRange> ranges, int elementCount, int partitionElements, DType dtype, double topKRatio)
    {
        (_ranges, _partitionElements, _dtype, _topKRatio) = (ranges, partitionElements, dtype, topKRatio);
        if (topKRatio > 0) _residual = new float[elementCount];
        else if (dtype != DType.Float32)
            _chunkBuffers = ranges.Select(_ => new[] { new byte[TensorWire.ChunkBytesMax], new byte[TensorWire.ChunkBytesMax] }).ToArray();
    }

    public bool Sparse => _residual is not null;

    /// <summary>
    /// The chunks for server <paramref name="server"/>, offsets relative to its key range, of at
    /// most <paramref name="chunkBytes"/> each (dense). Dense chunks are encoded as they are
    /// enumerated, so that encoding overlaps sending; an encoded chunk's data stays valid until
    /// the chunk after the next one is taken (a sender may keep one write in flight).
    /// </summary>
    public IEnumerable<TensorChunk> Encode(float[] gradient, int server, int chunkBytes = TensorWire.ChunkBytesSent) =>
        Sparse ? TopK(gradient, _ranges[server]) : Dense(gradient, server, Math.Min(chunkBytes, TensorWire.ChunkBytesMax));

    private IEnumerable<TensorChunk> Dense(float[] gradient, int server, int chunkBytes)
    {
        var range = _ranges[server];
        var elements = gradient.AsMemory((int)range.Start, range.Length);
        if (_chunkBuffers is null)
        {
            foreach (var chunk in TensorWire.Chunks(FloatMemory.AsBytes(elements), chunkBytes: chunkBytes)) yield return chunk;
            yield break;
        }
        int elementBytes = ElementCodec.ElementBytes(_dtype), step = chunkBytes / elementBytes, turn = 0;
        for (int start = 0; start < range.Length; start += step, turn ^= 1)
        {
            int length = Math.Min(step, range.Length - start);
            var data = _chunkBuffers[server][turn].AsMemory(0, length * elementBytes);
            ElementCodec.Encode(elements.Span.Slice(start, length), data.Span, _dtype);
            yield return new TensorChunk { OffsetElements = start, Data = UnsafeByteOperations.UnsafeWrap(data) };
        }
    }

    private List<TensorChunk> TopK(float[] gradient, KeyRange range)
    {
        var accumulated = _residual.AsSpan((int)range.Start, range.Length);
        TensorPrimitives.Add(gradient.AsSpan((int)range.Start, range.Length), accumulated, accumulated);
        var chunks = new List<TensorChunk>();
        using var scope = torch.NewDisposeScope();
        var all = torch.tensor(accumulated.ToArray());
        for (int start = 0; start < range.Length; start += _partitionElements)
        {
            int length = Math.Min(_partitionElements, range.Length - start);
            int k = Math.Max(1, (int)Math.Ceiling(_topKRatio * length));
            var part = all.narrow(0, start, length);
            var (_, largest) = part.abs().topk(k);
            var (indices, _) = largest.sort();
            var values = part.index_select(0, indices).contiguous();
            var positions = indices.to(torch.ScalarType.Int32).contiguous();
            var encoded = new byte[k * ElementCodec.ElementBytes(_dtype)];
            ElementCodec.Encode(MemoryMarshal.Cast<byte, float>(values.bytes), encoded, _dtype);
            chunks.Add(new TensorChunk
            {
                OffsetElements = start,
                LengthElements = length,
                Indices = ByteString.CopyFrom(positions.bytes),
                Data = UnsafeByteOperations.UnsafeWrap(encoded),
            });
            part.index_fill_(0, indices, 0f);
        }
        MemoryMarshal.Cast<byte, float>(all.bytes).CopyTo(accumulated);
        return chunks;
    }
}
