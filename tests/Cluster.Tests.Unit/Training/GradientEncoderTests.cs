using Cluster.Protos;
using Cluster.Shared.Sharding;
using Cluster.Shared.Wire;
using Cluster.Worker.Training;
using System.Runtime.InteropServices;
using TorchSharp;

namespace Cluster.Tests.Unit.Training;

/// <summary>
/// <see cref="GradientEncoder"/>, dense: float32 chunks wrap the gradient; bfloat16 and float16
/// chunks are encoded as they are taken into two chunk buffers per server, so a sender that keeps
/// one chunk's write in flight while it takes the next still sends every chunk intact. A gradient
/// read in place from its tensors, piece by piece, sends what the same gradient in one buffer sends.
/// </summary>
[Trait("Tier", "unit")]
public sealed class GradientEncoderTests
{
    private const int ElementCount = 1000, PartitionElements = 100;

    [Theory]
    [InlineData(DType.Float32, false)]
    [InlineData(DType.Bfloat16, false)]
    [InlineData(DType.Float16, false)]
    [InlineData(DType.Float32, true)]
    [InlineData(DType.Bfloat16, true)]
    public void A_sender_with_one_write_in_flight_sends_every_element_of_every_server(DType dtype, bool inPieces)
    {
        var ranges = KeyRanges.Split(ElementCount, 3, PartitionElements);
        var encoder = new GradientEncoder(ranges, ElementCount, PartitionElements, dtype, topKRatio: 0);
        var gradient = Enumerable.Range(0, ElementCount).Select(i => MathF.Sin(i) * (i + 1)).ToArray();
        var expected = Wire.WireValues.Carried(gradient, dtype);
        // In pieces: small ones (gathered into chunk buffers) between large ones (sent in place).
        using var source = inPieces ? Pieces(gradient, [0, 5, 9, 200, 203, 210, 215, 220, 225, 230, 650, 651, 660, ElementCount]) : StepGradient.Of(gradient);

        // The servers' chunks taken side by side, as concurrent pushes take them; 64-byte chunks.
        var senders = ranges.Select((_, server) => encoder.Encode(source, server, chunkBytes: 64).GetEnumerator()).ToList();
        var received = new float[ElementCount];
        var inFlight = new TensorChunk?[ranges.Count];
        int[] next = new int[ranges.Count];
        for (bool more = true; more;)
        {
            more = false;
            for (int server = 0; server < ranges.Count; server++)
            {
                bool taken = senders[server].MoveNext();
                // The chunk before is "written" only now, after the next one was taken (and encoded).
                if (inFlight[server] is { } sent)
                    next[server] = (int)ChunkReader.ReadDense(sent, dtype, received.AsSpan((int)ranges[server].Start, ranges[server].Length), next[server]);
                inFlight[server] = taken ? senders[server].Current : null;
                more |= taken;
            }
        }

        for (int server = 0; server < ranges.Count; server++) Assert.Equal(ranges[server].Length, next[server]);
        Assert.Equal(expected, received);
    }

    [Fact]
    public void Encoded_chunks_are_no_larger_than_asked_and_cover_the_range_in_order()
    {
        var ranges = KeyRanges.Split(ElementCount, 1, PartitionElements);
        var encoder = new GradientEncoder(ranges, ElementCount, PartitionElements, DType.Bfloat16, topKRatio: 0);

        long offset = 0;
        foreach (var chunk in encoder.Encode(StepGradient.Of(new float[ElementCount]), 0, chunkBytes: 300))
        {
            Assert.Equal(offset, chunk.OffsetElements);
            Assert.InRange(chunk.Data.Length, 2, 300);
            offset += chunk.Data.Length / 2;
        }
        Assert.Equal(ElementCount, offset);
    }

    [Theory]
    [InlineData(DType.Float32, 0)]
    [InlineData(DType.Bfloat16, 0)]
    [InlineData(DType.Float16, 0)]
    [InlineData(DType.Float32, 0.1)]
    [InlineData(DType.Bfloat16, 0.1)]
    public void A_gradient_in_pieces_sends_what_the_same_gradient_in_one_buffer_sends(DType dtype, double topKRatio)
    {
        var ranges = KeyRanges.Split(ElementCount, 3, PartitionElements);
        var gradient = Enumerable.Range(0, ElementCount).Select(i => MathF.Cos(i) * (i % 17 + 1)).ToArray();
        // Pieces that cross the servers' ranges and the chunks, one of a single element.
        using var pieces = Pieces(gradient, [0, 7, 307, 308, 758, ElementCount]);
        var whole = new GradientEncoder(ranges, ElementCount, PartitionElements, dtype, topKRatio);
        var piecewise = new GradientEncoder(ranges, ElementCount, PartitionElements, dtype, topKRatio);

        for (int step = 0; step < 2; step++)
            for (int server = 0; server < ranges.Count; server++)
            {
                var expected = Received(whole.Encode(StepGradient.Of(gradient), server, chunkBytes: 64), dtype, ranges[server].Length, topKRatio > 0);
                var actual = Received(piecewise.Encode(pieces, server, chunkBytes: 64), dtype, ranges[server].Length, topKRatio > 0);
                Assert.Equal(expected, actual);
            }
    }

    [Fact]
    public void A_range_of_a_gradient_in_pieces_is_cut_from_the_pieces_it_covers()
    {
        using var pieces = StepGradient.Of([torch.tensor(new float[] { 1, 2, 3 }), torch.tensor(new float[] { 4 }), torch.tensor(new float[] { 5, 6 })]);

        Assert.Equal(6, pieces.ElementCount);
        Assert.Equal([[2f, 3f], [4f], [5f]], pieces.Range(1, 4).Select(p => MemoryMarshal.Cast<byte, float>(p.Span).ToArray()));
        Assert.Empty(pieces.Range(6, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pieces.Range(4, 3).ToList());
        var all = new float[6];
        pieces.CopyTo(all);
        Assert.Equal([1f, 2f, 3f, 4f, 5f, 6f], all);
    }

    [Fact]
    public void Small_float32_pieces_are_gathered_into_few_chunks_and_large_ones_sent_in_place()
    {
        const int count = 100 * 10 + 40_000;
        var ranges = KeyRanges.Split(count, 1, count);
        var encoder = new GradientEncoder(ranges, count, count, DType.Float32, topKRatio: 0);
        var gradient = Enumerable.Range(0, count).Select(i => (float)i).ToArray();
        // A hundred 10-element pieces (biases), then one of 40,000 elements (160,000 bytes).
        int[] cuts = [.. Enumerable.Range(0, 101).Select(i => i * 10), count];
        using var pieces = Pieces(gradient, cuts);

        var chunks = encoder.Encode(pieces, 0, chunkBytes: 1 << 20).ToList();

        Assert.Equal([(0L, 4000), (1000L, 160_000)], chunks.Select(c => (c.OffsetElements, c.Data.Length)));
        Assert.Equal(gradient, Received(chunks, DType.Float32, count, sparse: false));
    }

    private static StepGradient Pieces(float[] gradient, int[] cuts) =>
        StepGradient.Of(cuts.Zip(cuts.Skip(1), (from, to) => torch.tensor(gradient[from..to])).ToList());

    [Fact]
    public void A_piece_that_is_not_a_contiguous_float32_cpu_tensor_is_refused_naming_it()
    {
        using var good = torch.tensor(new float[] { 1, 2 });
        using var doubles = torch.tensor(new double[] { 1, 2 });
        using var square = torch.tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2);
        using var transposed = square.t();

        var wrongType = Assert.Throws<ArgumentException>(() => StepGradient.Of([good, doubles]));
        var strided = Assert.Throws<ArgumentException>(() => StepGradient.Of([transposed]));

        Assert.Contains("pieces[1]: a Float64 tensor on CPU; expected a contiguous Float32 tensor on CPU", wrongType.Message);
        Assert.Contains("pieces[0]: a Float32 tensor on CPU, not contiguous", strided.Message);
        Assert.Equal(2f, good[1].item<float>());
    }

    /// <summary>What a server reads from one push's chunks, taken one at a time.</summary>
    private static float[] Received(IEnumerable<TensorChunk> chunks, DType dtype, int length, bool sparse)
    {
        var received = new float[length];
        long next = 0;
        foreach (var chunk in chunks)
            next = sparse ? ChunkReader.ReadSparse(chunk, dtype, received, next) : ChunkReader.ReadDense(chunk, dtype, received, next);
        Assert.Equal(length, next);
        return received;
    }
}
