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
/// wraps the gradient's memory (no copy) but for runs of small pieces (biases, norms), which are
/// gathered into one chunk so that a model of many small tensors is not sent as as many frames;
/// bfloat16 / float16 encode each chunk as it is taken into
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
    private readonly byte[][][]? _chunkBuffers;  // [server][0 or 1]: dense bfloat16 / float16 chunks, or float32 gathered ones, used in turn
    private readonly float[]? _residual;

    /// <summary>A float32 piece smaller than this is gathered with its small neighbours into one chunk of at most this size.</summary>
    public const int GatherBytes = 64 << 10;

    public GradientEncoder(IReadOnlyList<KeyRange> ranges, int elementCount, int partitionElements, DType dtype, double topKRatio)
    {
        (_ranges, _partitionElements, _dtype, _topKRatio) = (ranges, partitionElements, dtype, topKRatio);
        if (topKRatio > 0) _residual = new float[elementCount];
        else
        {
            int bytes = dtype == DType.Float32 ? GatherBytes : TensorWire.ChunkBytesMax;
            _chunkBuffers = ranges.Select(_ => new[] { new byte[bytes], new byte[bytes] }).ToArray();
        }
    }

    public bool Sparse => _residual is not null;

    /// <summary>
    /// The chunks for server <paramref name="server"/>, offsets relative to its key range, of at
    /// most <paramref name="chunkBytes"/> each (dense). Dense chunks are encoded as they are
    /// enumerated, so that encoding overlaps sending; an encoded chunk's data stays valid until
    /// the chunk after the next one is taken (a sender may keep one write in flight).
    /// </summary>
    public IEnumerable<TensorChunk> Encode(StepGradient gradient, int server, int chunkBytes = TensorWire.ChunkBytesSent) =>
        Sparse ? TopK(gradient, _ranges[server]) : Dense(gradient, server, Math.Min(chunkBytes, TensorWire.ChunkBytesMax));

    private IEnumerable<TensorChunk> Dense(StepGradient gradient, int server, int chunkBytes) =>
        _dtype == DType.Float32 ? DenseFloat32(gradient, server, chunkBytes) : DenseEncoded(gradient, server, chunkBytes);

    /// <summary>Large pieces go as they are, a chunk never spanning two; runs of small ones are gathered into a chunk buffer.</summary>
    private IEnumerable<TensorChunk> DenseFloat32(StepGradient gradient, int server, int chunkBytes)
    {
        var range = _ranges[server];
        var buffers = _chunkBuffers![server];
        int capacity = Math.Min(GatherBytes, chunkBytes) / sizeof(float) * sizeof(float), gathered = 0, turn = 0;
        long offset = 0, gatheredFrom = 0;
        foreach (var piece in gradient.Range(range.Start, range.Length))
        {
            if (gathered > 0 && (piece.Length >= capacity || gathered + piece.Length > capacity))
            {
                yield return Gathered(buffers[turn], gatheredFrom, gathered);
                (gathered, turn) = (0, turn ^ 1);
            }
            if (piece.Length >= capacity)
            {
                foreach (var chunk in TensorWire.Chunks(piece, firstElement: offset, chunkBytes: chunkBytes)) yield return chunk;
            }
            else
            {
                if (gathered == 0) gatheredFrom = offset;
                piece.Span.CopyTo(buffers[turn].AsSpan(gathered));
                gathered += piece.Length;
            }
            offset += StepGradient.Elements(piece);
        }
        if (gathered > 0) yield return Gathered(buffers[turn], gatheredFrom, gathered);
    }

    private static TensorChunk Gathered(byte[] buffer, long firstElement, int bytes) =>
        new() { OffsetElements = firstElement, Data = UnsafeByteOperations.UnsafeWrap(buffer.AsMemory(0, bytes)) };

    private IEnumerable<TensorChunk> DenseEncoded(StepGradient gradient, int server, int chunkBytes)
    {
        var range = _ranges[server];
        int elementBytes = ElementCodec.ElementBytes(_dtype), step = chunkBytes / elementBytes, turn = 0;
        for (int start = 0; start < range.Length; start += step, turn ^= 1)
        {
            int length = Math.Min(step, range.Length - start);
            var data = _chunkBuffers![server][turn].AsMemory(0, length * elementBytes);
            var encoded = data.Span;
            foreach (var piece in gradient.Range(range.Start + start, length))
            {
                var values = MemoryMarshal.Cast<byte, float>(piece.Span);
                ElementCodec.Encode(values, encoded, _dtype);
                encoded = encoded[(values.Length * elementBytes)..];
            }
            yield return new TensorChunk { OffsetElements = start, Data = UnsafeByteOperations.UnsafeWrap(data) };
        }
    }

    private List<TensorChunk> TopK(StepGradient gradient, KeyRange range)
    {
        var accumulated = _residual.AsSpan((int)range.Start, range.Length);
        foreach (var piece in gradient.Range(range.Start, range.Length))
        {
            var values = MemoryMarshal.Cast<byte, float>(piece.Span);
            var part = accumulated[..values.Length];
            TensorPrimitives.Add(values, part, part);
            accumulated = accumulated[values.Length..];
        }
        accumulated = _residual.AsSpan((int)range.Start, range.Length);
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
