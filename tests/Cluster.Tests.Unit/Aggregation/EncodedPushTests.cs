using System.Runtime.InteropServices;
using Cluster.ParameterServer;
using Cluster.ParameterServer.Aggregation;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;
using Cluster.Tests.Unit.Security;
using Cluster.Tests.Unit.Wire;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// Dense bfloat16 and float16 pushes are kept on the server as they came off the wire and decoded
/// only as a partition is combined and applied, a block at a time: the weights must come out bit
/// for bit as if every push had been decoded to float32 on arrival, whatever mixes of wire types,
/// ranks, blocks and partitions meet; NaN and Inf are still found (on the encoded bits), and a
/// retry must keep the wire type its first part was stored in.
/// </summary>
[Trait("Tier", "unit")]
public sealed class EncodedPushTests
{
    // Several aggregation blocks, and a length that is a multiple of neither the block nor a SIMD vector.
    private const int Elements = 2 * StepAggregator.BlockElements + 1237;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private static float[] RandomGradient(int seed, int length = Elements)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1) * 1e-2f)];
    }

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];

    [Fact]
    public void Only_dense_pushes_of_a_two_byte_wire_type_are_kept_encoded()
    {
        Assert.Equal(DType.Bfloat16, StepAggregator.StoredAs(DType.Bfloat16, sparse: false));
        Assert.Equal(DType.Float16, StepAggregator.StoredAs(DType.Float16, sparse: false));
        Assert.Equal(DType.Float32, StepAggregator.StoredAs(DType.Float32, sparse: false));
        Assert.Equal(DType.Float32, StepAggregator.StoredAs(DType.Bfloat16, sparse: true));
    }

    [Theory]
    [InlineData(DType.Bfloat16, DType.Float32, DType.Float16)]
    [InlineData(DType.Bfloat16, DType.Bfloat16, DType.Bfloat16)]
    [InlineData(DType.Float32, DType.Float16, DType.Bfloat16)]
    public void Ranks_kept_encoded_combine_to_the_bits_of_their_decoded_floats(DType first, DType second, DType third)
    {
        DType[] dtypes = [first, second, third];
        int[] samples = [64, 17, 33];
        var encoded = new StepAggregator(3, Elements);
        var decoded = new StepAggregator(3, Elements);
        for (int rank = 0; rank < 3; rank++)
        {
            float[] carried = WireValues.Carried(RandomGradient(rank), dtypes[rank]);
            WireValues.StoreAsPushed(encoded.BufferFor(rank).Span, carried, dtypes[rank]);
            encoded.SetEncoding(rank, dtypes[rank]);
            carried.CopyTo(decoded.BufferFor(rank).Span);
            encoded.SetSampleCount(rank, samples[rank]);
            decoded.SetSampleCount(rank, samples[rank]);
        }
        // A range starting off any block boundary and spanning two of them.
        int start = 1001, length = Elements - 2000;

        var expected = new float[length];
        decoded.Combine(start, expected);
        var whole = new float[length];
        encoded.Combine(start, whole);
        Assert.Equal(Bits(expected), Bits(whole));

        // Block by block through a small scratch, as the applier combines, with rank 1 excluded.
        bool[] excluded = [false, true, false];
        decoded.Combine(start, expected, excluded);
        var blocks = new float[length];
        var scratch = new float[StepAggregator.BlockElements];
        for (int offset = 0; offset < length; offset += scratch.Length)
        {
            int block = Math.Min(scratch.Length, length - offset);
            encoded.Combined(start + offset, scratch.AsSpan(0, block), excluded).CopyTo(blocks.AsSpan(offset, block));
        }
        Assert.Equal(Bits(expected), Bits(blocks));
    }

    [Theory]
    [InlineData(DType.Bfloat16)]
    [InlineData(DType.Float16)]
    public void A_sole_rank_kept_encoded_is_decoded_into_the_scratch_and_its_buffer_is_left_as_it_is(DType dtype)
    {
        var aggregator = new StepAggregator(2, 40);
        float[] carried = WireValues.Carried(RandomGradient(7, 40), dtype);
        WireValues.StoreAsPushed(aggregator.BufferFor(1).Span, carried, dtype);
        aggregator.SetEncoding(1, dtype);
        aggregator.SetSampleCount(0, 0);
        aggregator.SetSampleCount(1, 5);
        byte[] before = MemoryMarshal.AsBytes(aggregator.BufferFor(1).Span).ToArray();
        var scratch = new float[30];

        var gradient = aggregator.Combined(10, scratch);

        Assert.True(gradient.Overlaps(scratch));
        Assert.Equal(Bits(carried.AsSpan(10, 30)), Bits(gradient));
        Assert.Equal(before, MemoryMarshal.AsBytes(aggregator.BufferFor(1).Span).ToArray());
    }

    [Theory]
    [InlineData(DType.Bfloat16, float.NaN)]
    [InlineData(DType.Bfloat16, float.PositiveInfinity)]
    [InlineData(DType.Float16, float.NegativeInfinity)]
    [InlineData(DType.Float16, 1e6f)] // beyond float16's range: infinity on the wire
    public void A_non_finite_element_kept_encoded_is_found_in_its_range_only(DType dtype, float bad)
    {
        var aggregator = new StepAggregator(1, Elements);
        float[] gradient = RandomGradient(3);
        gradient[StepAggregator.BlockElements + 5] = bad;
        WireValues.StoreAsPushed(aggregator.BufferFor(0).Span, gradient, dtype);
        aggregator.SetEncoding(0, dtype);

        Assert.False(aggregator.IsFinite(0, 0, Elements));
        Assert.False(aggregator.IsFinite(0, StepAggregator.BlockElements + 5, 1));
        Assert.True(aggregator.IsFinite(0, 0, StepAggregator.BlockElements + 5));
        Assert.True(aggregator.IsFinite(0, StepAggregator.BlockElements + 6, Elements - StepAggregator.BlockElements - 6));
    }

    [Theory]
    [InlineData("bsp")]
    [InlineData("asp")]
    public async Task Adam_over_pushes_kept_encoded_gives_the_bits_of_pushes_decoded_on_arrival(string sync)
    {
        // Partitions that do not line up with the aggregation blocks, and a short last one.
        const int partition = StepAggregator.BlockElements + 4000;
        var adam = new OptimizerSettings { Kind = "adam", LearningRate = 1e-3, WeightDecay = 0.01 };
        float[] initial = RandomGradient(99);
        var encoded = new JobParameters("job-e", 2, new TensorLayout(), adam, [.. initial], partitionElements: partition) { SyncMode = sync };
        var decoded = new JobParameters("job-d", 2, new TensorLayout(), adam, [.. initial], partitionElements: partition) { SyncMode = sync };
        DType[] wire = [DType.Bfloat16, DType.Float16];

        for (long step = 0; step < 3; step++)
        {
            for (int rank = 0; rank < 2; rank++)
            {
                float[] carried = WireValues.Carried(RandomGradient((int)step * 10 + rank), wire[rank]);
                WireValues.StoreAsPushed(encoded.BeginPush(rank, step, 32 + rank, wire[rank]).Span, carried, wire[rank]);
                encoded.Received(rank, Elements);
                encoded.CompletePush(rank);
                carried.CopyTo(decoded.BeginPush(rank, step, 32 + rank).Span);
                decoded.Received(rank, Elements);
                decoded.CompletePush(rank);
            }
            long version = sync == "bsp" ? step + 1 : 2 * (step + 1);
            await encoded.WaitForVersionAsync(version, CancellationToken.None).WaitAsync(Patience);
            await decoded.WaitForVersionAsync(version, CancellationToken.None).WaitAsync(Patience);
        }

        Assert.Equal(Bits(decoded.WeightsAsFloats), Bits(encoded.WeightsAsFloats));
        Assert.NotEqual(Bits(initial), Bits(encoded.WeightsAsFloats));
    }

    [Theory]
    [InlineData("adam", 1, DType.Bfloat16)]   // a sole bfloat16 rank: stepped from its elements, the copy written in the same pass
    [InlineData("adamw", 1, DType.Float16)]   // the same gradient path, the copy encoded after the step
    [InlineData("sgd", 1, DType.Bfloat16)]    // the optimizers' block-by-block default
    [InlineData("adam", 2, DType.Bfloat16)]   // ranks combined, then the copy encoded
    public async Task The_pull_copy_holds_each_partitions_current_weights_encoded_and_only_those(string optimizer, int ranks, DType pullType)
    {
        const int partition = StepAggregator.BlockElements + 4000;
        var settings = new OptimizerSettings { Kind = optimizer, LearningRate = 1e-3, Momentum = optimizer == "sgd" ? 0.9 : 0, WeightDecay = 0.01 };
        float[] initial = RandomGradient(98);
        var job = new JobParameters("job-c", ranks, new TensorLayout(), settings, [.. initial], partitionElements: partition);
        var decoded = new JobParameters("job-d", ranks, new TensorLayout(), settings, [.. initial], partitionElements: partition);
        job.KeepPullCopy(pullType);
        Assert.All(Enumerable.Range(0, job.PartitionCount), p => Assert.Null(job.PullCopyOf(p, pullType))); // version 0 was never copied

        for (long step = 0; step < 3; step++)
        {
            for (int rank = 0; rank < ranks; rank++)
            {
                float[] gradient = RandomGradient((int)step * 10 + rank);
                // Step 1 brings a NaN in the last partition from every rank: that partition is not
                // applied, yet its copy must hold it at the new version.
                if (step == 1) gradient[Elements - 2] = float.NaN;
                float[] carried = WireValues.Carried(gradient, DType.Bfloat16);
                WireValues.StoreAsPushed(job.BeginPush(rank, step, 32 + rank, DType.Bfloat16).Span, carried, DType.Bfloat16);
                job.Received(rank, Elements);
                carried.CopyTo(decoded.BeginPush(rank, step, 32 + rank).Span);
                decoded.Received(rank, Elements);
                foreach (var each in new[] { job, decoded })
                {
                    if (step == 1) Assert.Throws<NonFiniteGradientException>(() => each.CompletePush(rank));
                    else each.CompletePush(rank);
                }
            }
            await job.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
            await decoded.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);

            Assert.Equal(Bits(decoded.WeightsAsFloats), Bits(job.WeightsAsFloats));
            for (int p = 0; p < job.PartitionCount; p++)
            {
                var expected = new byte[job.PartitionLength(p) * 2];
                ElementCodec.Encode(job.Partition(p).Span, expected, pullType);
                Assert.Equal(expected, job.PullCopyOf(p, pullType)!.Value.ToArray());
                Assert.Null(job.PullCopyOf(p, pullType == DType.Bfloat16 ? DType.Float16 : DType.Bfloat16)); // another type: encoded by the pull
            }
        }
    }

    [Fact]
    public async Task A_retry_keeps_the_wire_type_of_the_partitions_already_delivered()
    {
        const int partition = 1000;
        var job = new JobParameters("job-r", 1, new TensorLayout(), new OptimizerSettings { Kind = "sgd", LearningRate = 1 }, new float[3000],
            partitionElements: partition);
        float[] gradient = WireValues.Carried(RandomGradient(5, 3000), DType.Bfloat16);

        // The first part of the push gets through: partitions 0 and 1, kept as bfloat16.
        WireValues.StoreAsPushed(job.BeginPush(0, 0, 8, DType.Bfloat16).Span, gradient, DType.Bfloat16);
        job.Received(0, 2000);
        job.AbortPush(0);

        // A retry in another wire type would mix two forms in one buffer: refused, naming dtype.
        var refused = Assert.Throws<PushRejectedException>(() => job.BeginPush(0, 0, 8, DType.Float32));
        Assert.Contains("dtype", refused.Message);
        Assert.Contains("Bfloat16", refused.Message);

        // The same wire type completes the step; the partitions already delivered are not taken from the retry.
        var retry = gradient.ToArray();
        retry[0] = 1000f;
        WireValues.StoreAsPushed(job.BeginPush(0, 0, 8, DType.Bfloat16).Span, retry, DType.Bfloat16);
        job.Received(0, 3000);
        job.CompletePush(0);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Patience);

        Assert.Equal(Bits(gradient.Select(g => -g).ToArray()), Bits(job.WeightsAsFloats));
    }

    [Fact]
    public async Task A_bfloat16_push_over_grpc_is_applied_as_its_decoded_floats_and_a_nan_in_it_is_refused()
    {
        var store = new ParameterStore();
        var service = new ParameterServerService(store, new ParameterServerOptions());
        var header = new InitializeHeader
        {
            JobId = "job-g", WorldSize = 1, RangeElements = Elements, PartitionElements = StepAggregator.BlockElements,
            Layout = new TensorLayout { Tensors = { new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 } } },
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 1 },
        };
        await service.Initialize(new ListStream<InitializeMessage>(
            [new InitializeMessage { Header = header }, .. TensorWire.Chunks(new byte[Elements * 4]).Select(c => new InitializeMessage { Chunk = c })]),
            new TestCallContext(CancellationToken.None));
        var job = store.Find("job-g")!;
        float[] gradient = RandomGradient(11);
        // A bfloat16 pull before any step: encoded as it is sent (the job keeps a copy from now on).
        Assert.Equal(new byte[Elements * 2], await PullBytes(service, 0));

        var reply = await Push(service, 0, gradient);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Patience);
        Assert.False(reply.Rejected);
        float[] stepped = [.. WireValues.Carried(gradient, DType.Bfloat16).Select(g => -g)];
        Assert.Equal(Bits(stepped), Bits(job.WeightsAsFloats));
        // Sent from the copy the applier wrote: the new weights, encoded.
        var encoded = new byte[Elements * 2];
        ElementCodec.Encode(stepped, encoded, DType.Bfloat16);
        Assert.Equal(encoded, await PullBytes(service, 1));

        gradient[Elements - 3] = float.NaN;
        reply = await Push(service, 1, gradient);
        Assert.True(reply.Rejected);
        Assert.Equal(1, job.RejectedGradients);
    }

    /// <summary>A bfloat16 pull of version <paramref name="minVersion"/>, its chunks put together.</summary>
    private static async Task<byte[]> PullBytes(ParameterServerService service, long minVersion)
    {
        var writer = new ListWriter<PullMessage>();
        await service.PullParameters(new PullRequest { JobId = "job-g", MinVersion = minVersion, Dtype = DType.Bfloat16 }, writer,
            new TestCallContext(CancellationToken.None)).WaitAsync(Patience);
        var bytes = new byte[Elements * 2];
        foreach (var chunk in writer.Written.Where(m => m.BodyCase == PullMessage.BodyOneofCase.Chunk).Select(m => m.Chunk))
            chunk.Data.Span.CopyTo(bytes.AsSpan((int)chunk.OffsetElements * 2));
        return bytes;
    }

    private static Task<PushReply> Push(ParameterServerService service, long step, float[] gradient)
    {
        var bytes = new byte[gradient.Length * 2];
        ElementCodec.Encode(gradient, bytes, DType.Bfloat16);
        return service.PushGradients(new ListStream<PushMessage>(
            [new PushMessage { Header = new PushHeader { JobId = "job-g", Rank = 0, Step = step, SampleCount = 1, Dtype = DType.Bfloat16 } },
             .. TensorWire.Chunks(bytes, 0, 2, 1000).Select(c => new PushMessage { Chunk = c })]),
            new TestCallContext(CancellationToken.None));
    }
}
