using System.Runtime.InteropServices;
using System.Threading.Channels;
using Cluster.Protos;
using Cluster.Worker.AllReduce;

namespace Cluster.Tests.Unit.AllReduce;

/// <summary>The ring's math without a network: members joined by in-memory queues, run concurrently.</summary>
[Trait("Tier", "unit")]
public sealed class RingAllReduceTests
{
    private const int ChunkElements = 1 << 18;

    [Theory]
    [InlineData(1, 10, 1 << 20)]
    [InlineData(2, 1, 1 << 20)]         // fewer elements than members: empty segments
    [InlineData(2, 1001, 1 << 20)]
    [InlineData(3, 2, 1 << 20)]
    [InlineData(3, 1000, 64)]           // many small buckets
    [InlineData(4, 4097, 4)]            // one element per bucket
    [InlineData(5, 12345, 1 << 20)]
    [InlineData(2, 2 * ChunkElements + 7, 64 << 20)]  // segments of several chunks
    [InlineData(3, 3 * ChunkElements + 11, 1 << 20)]  // several buckets of several chunks
    public async Task Every_member_ends_with_the_same_sample_weighted_mean(int size, int elementCount, int bucketBytes)
    {
        var random = new Random(size * 7919 + elementCount);
        var inputs = Enumerable.Range(0, size).Select(_ => Enumerable.Range(0, elementCount).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray()).ToArray();
        int[] samples = Enumerable.Range(0, size).Select(r => r == 1 ? 0 : random.Next(1, 65)).ToArray(); // rank 1 trained no samples

        float[][] results = await RunRingAsync(inputs, samples, bucketBytes, step: 3);

        long total = samples.Sum();
        for (int i = 0; i < elementCount; i++)
        {
            double expected = 0;
            for (int r = 0; r < size; r++) expected += (double)samples[r] * inputs[r][i];
            expected /= total;
            Assert.True(Math.Abs(results[0][i] - expected) <= 1e-5 * Math.Max(1, Math.Abs(expected)),
                $"element {i}: {results[0][i]} vs {expected}");
        }
        for (int r = 1; r < size; r++)
            Assert.True(MemoryMarshal.AsBytes(results[0].AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(results[r].AsSpan())), $"member {r} differs from member 0");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task The_result_does_not_depend_on_timing(int size)
    {
        var random = new Random(size);
        var inputs = Enumerable.Range(0, size).Select(_ => Enumerable.Range(0, 5000).Select(_ => (float)random.NextDouble()).ToArray()).ToArray();
        int[] samples = Enumerable.Range(0, size).Select(r => 10 + r).ToArray();

        var first = await RunRingAsync(inputs, samples, bucketBytes: 4096, step: 0);
        var jittered = await RunRingAsync(inputs, samples, bucketBytes: 4096, step: 0, jitterSeed: 42);

        for (int r = 0; r < size; r++)
            Assert.Equal(first[r], jittered[r]);
    }

    [Fact]
    public async Task A_single_member_keeps_its_own_gradient_unchanged()
    {
        float[] gradient = [0.1f, 0.2f, 0.3f];
        var results = await RunRingAsync([gradient], [7], bucketBytes: 1 << 20, step: 0);
        Assert.Equal(gradient, results[0]);
    }

    [Fact]
    public async Task A_segment_of_another_step_breaks_the_ring()
    {
        var links = Links(2);
        var member = new RingAllReduce(0, 2, 1 << 20);
        var bytes = new byte[8 * sizeof(float)];
        await links[1].SendAsync(new RingSegment { Step = 99, Chunk = new TensorChunk { OffsetElements = 4, Data = Google.Protobuf.ByteString.CopyFrom(new byte[16]) } }, default);

        var broken = await Assert.ThrowsAsync<RingBrokenException>(() => member.ReduceAsync(links[0], step: 5, bytes, 1, default));
        Assert.Contains("got step 99", broken.Message, StringComparison.Ordinal);
    }

    /// <summary>Runs one all-reduce on every member concurrently; returns each member's vector.</summary>
    private static async Task<float[][]> RunRingAsync(float[][] inputs, int[] samples, int bucketBytes, long step, int? jitterSeed = null)
    {
        int size = inputs.Length;
        var links = Links(size, jitterSeed);
        var buffers = inputs.Select(v => MemoryMarshal.AsBytes(v.AsSpan()).ToArray()).ToArray();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await Task.WhenAll(Enumerable.Range(0, size).Select(r =>
            Task.Run(() => new RingAllReduce(r, size, bucketBytes).ReduceAsync(links[r], step, buffers[r], samples[r], timeout.Token))));
        return buffers.Select(b => MemoryMarshal.Cast<byte, float>(b.AsSpan()).ToArray()).ToArray();
    }

    private static MemoryLink[] Links(int size, int? jitterSeed = null)
    {
        var edges = Enumerable.Range(0, size).Select(_ => Channel.CreateUnbounded<RingSegment>()).ToArray();
        // Member r sends on edge r and receives on edge r - 1.
        return Enumerable.Range(0, size).Select(r => new MemoryLink(edges[r].Writer, edges[(r + size - 1) % size].Reader,
            jitterSeed is { } seed ? new Random(seed + r) : null)).ToArray();
    }

    private sealed class MemoryLink(ChannelWriter<RingSegment> toSuccessor, ChannelReader<RingSegment> fromPredecessor, Random? jitter) : IRingLink
    {
        public async ValueTask SendAsync(RingSegment segment, CancellationToken cancellationToken)
        {
            if (jitter is not null && jitter.Next(4) == 0) await Task.Delay(jitter.Next(3), cancellationToken);
            await toSuccessor.WriteAsync(segment, cancellationToken);
        }

        public async ValueTask<RingSegment> ReceiveAsync(CancellationToken cancellationToken)
        {
            if (jitter is not null && jitter.Next(4) == 0) await Task.Delay(jitter.Next(3), cancellationToken);
            return await fromPredecessor.ReadAsync(cancellationToken);
        }
    }
}
