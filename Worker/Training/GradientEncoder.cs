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
/// wraps the gradient buffer (no copy); bfloat16 / float16 encode into a buffer kept per job;
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
    private readonly byte[]? _encoded;
    private readonly float[]? _residual;

    public GradientEncoder(IReadOnlyList<KeyRange> ranges, int elementCount, int partitionElements, DType dtype, double topKRatio)
    {
        (_ranges, _partitionElements, _dtype, _topKRatio) = (ranges, partitionElements, dtype, topKRatio);
        if (topKRatio > 0) _residual = new float[elementCount];
        else if (dtype != DType.Float32) _encoded = new byte[checked(elementCount * ElementCodec.ElementBytes(dtype))];
    }

    public bool Sparse => _residual is not null;

    /// <summary>
    /// The chunks for server <paramref name="server"/>, offsets relative to its key range, of at
    /// most <paramref name="chunkBytes"/> each (dense). Dense chunks are encoded as they are
    /// enumerated, so that encoding overlaps sending.
    /// </summary>
    public IEnumerable<TensorChunk> Encode(float[] gradient, int server, int chunkBytes = TensorWire.ChunkBytesSent) =>
        Sparse ? TopK(gradient, _ranges[server]) : Dense(gradient, _ranges[server], chunkBytes);

    private IEnumerable<TensorChunk> Dense(float[] gradient, KeyRange range, int chunkBytes)
    {
        var elements = gradient.AsMemory((int)range.Start, range.Length);
        if (_encoded is null)
        {
            foreach (var chunk in TensorWire.Chunks(FloatMemory.AsBytes(elements), chunkBytes: chunkBytes)) yield return chunk;
            yield break;
        }
        int elementBytes = ElementCodec.ElementBytes(_dtype);
        var bytes = _encoded.AsMemory((int)range.Start * elementBytes, range.Length * elementBytes);
        foreach (var chunk in TensorWire.Chunks(bytes, 0, elementBytes, chunkBytes))
        {
            int start = (int)chunk.OffsetElements, length = chunk.Data.Length / elementBytes;
            ElementCodec.Encode(elements.Span.Slice(start, length), bytes.Span.Slice(start * elementBytes, length * elementBytes), _dtype);
            yield return chunk;
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
