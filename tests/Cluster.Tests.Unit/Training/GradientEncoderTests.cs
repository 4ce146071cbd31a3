using Cluster.Protos;
using Cluster.Shared.Sharding;
using Cluster.Shared.Wire;
using Cluster.Worker.Training;

namespace Cluster.Tests.Unit.Training;

/// <summary>
/// <see cref="GradientEncoder"/>, dense: float32 chunks wrap the gradient; bfloat16 and float16
/// chunks are encoded as they are taken into two chunk buffers per server, so a sender that keeps
/// one chunk's write in flight while it takes the next still sends every chunk intact.
/// </summary>
[Trait("Tier", "unit")]
public sealed class GradientEncoderTests
{
    private const int ElementCount = 1000, PartitionElements = 100;

    [Theory]
    [InlineData(DType.Float32)]
    [InlineData(DType.Bfloat16)]
    [InlineData(DType.Float16)]
    public void A_sender_with_one_write_in_flight_sends_every_element_of_every_server(DType dtype)
    {
        var ranges = KeyRanges.Split(ElementCount, 3, PartitionElements);
        var encoder = new GradientEncoder(ranges, ElementCount, PartitionElements, dtype, topKRatio: 0);
        var gradient = Enumerable.Range(0, ElementCount).Select(i => MathF.Sin(i) * (i + 1)).ToArray();
        var expected = Wire.WireValues.Carried(gradient, dtype);

        // The servers' chunks taken side by side, as concurrent pushes take them; 64-byte chunks.
        var senders = ranges.Select((_, server) => encoder.Encode(gradient, server, chunkBytes: 64).GetEnumerator()).ToList();
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
        foreach (var chunk in encoder.Encode(new float[ElementCount], 0, chunkBytes: 300))
        {
            Assert.Equal(offset, chunk.OffsetElements);
            Assert.InRange(chunk.Data.Length, 2, 300);
            offset += chunk.Data.Length / 2;
        }
        Assert.Equal(ElementCount, offset);
    }
}
