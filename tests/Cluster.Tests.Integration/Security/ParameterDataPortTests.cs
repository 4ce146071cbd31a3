using System.Buffers.Binary;
using System.Net.Sockets;
using Cluster.ParameterServer;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Training;
using Google.Protobuf;
using Grpc.Core;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// The parameter servers' data port (raw TCP for pushes and pulls) is closed like every gRPC
/// method: a connection that does not prove the cluster secret is never read past the
/// handshake, a frame against the rules closes the connection, and a call the server refuses
/// is answered with the status the gRPC handler gives.
/// </summary>
[Trait("Tier", "integration")]
public sealed class ParameterDataPortTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private const int Elements = 3000;

    [Fact]
    public async Task A_connection_with_a_wrong_secret_is_refused_and_never_served_a_frame()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        await using var stream = await ConnectAsync(server.DataUrl);
        var error = await Assert.ThrowsAsync<HandshakeFailedException>(() =>
            ParameterDataProtocol.Handshake.ConnectAsync(stream, ClusterSecret.Generate(), ReadOnlyMemory<byte>.Empty, CancellationToken.None));
        Assert.Contains("refused this member: the cluster secret presented is wrong", error.Message, StringComparison.Ordinal);
        Assert.Equal(0, await DataPortProbe.ReadUntilClosedAsync(stream, Timeout));

        // The worker's client with the wrong secret: no push reaches the server.
        using var client = new ParameterDataClient(server.DataUrl, new ClusterSecurity { Secret = ClusterSecret.Generate() }, Timeout);
        await Assert.ThrowsAsync<HandshakeFailedException>(() =>
            client.PushAsync(new PushHeader { JobId = "job", Rank = 0, Step = 0 }, [], Timeout, CancellationToken.None));
    }

    [Fact]
    public async Task Garbage_instead_of_the_handshake_or_an_oversized_hello_closes_the_connection_without_a_frame()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        await using (var garbage = await ConnectAsync(server.DataUrl))
        {
            await garbage.WriteAsync(new byte[4096].Select((_, i) => (byte)(i * 31)).ToArray());
            Assert.Equal(0, await DataPortProbe.BytesAfterGreetingAsync(garbage, Timeout));
        }
        await using (var huge = await ConnectAsync(server.DataUrl))
        {
            await huge.ReadExactlyAsync(new byte[DataPortProbe.GreetingBytes]);
            await huge.WriteAsync(new byte[64]);
            await huge.WriteAsync(BitConverter.GetBytes(int.MaxValue));
            Assert.Equal(0, await DataPortProbe.BytesAfterGreetingAsync(huge, Timeout));
        }
    }

    [Theory]
    [InlineData("an oversized header length")]
    [InlineData("oversized data")]
    [InlineData("a frame with no body")]
    [InlineData("a header that is not a DataFrame")]
    [InlineData("chunk data inside the header")]
    [InlineData("a push's end before its header")]
    public async Task A_frame_against_the_rules_closes_the_connection_without_an_answer(string violation)
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        await using var stream = await ConnectAsync(server.DataUrl);
        await ParameterDataProtocol.Handshake.ConnectAsync(stream, TestSecurity.Secret, ReadOnlyMemory<byte>.Empty, CancellationToken.None);
        byte[] frame = violation switch
        {
            "an oversized header length" => Lengths(ParameterDataProtocol.HeaderBytesMax + 1, 0),
            "oversized data" => [.. Lengths(Header(new DataFrame { Chunk = new TensorChunk() }).Length, ParameterDataProtocol.DataBytesMax + 1),
                .. Header(new DataFrame { Chunk = new TensorChunk() })],
            "a frame with no body" => [.. Lengths(0, 0)],
            "a header that is not a DataFrame" => [.. Lengths(4, 0), 0xFF, 0xFF, 0xFF, 0xFF],
            "chunk data inside the header" => Frame(new DataFrame { Chunk = new TensorChunk { Data = ByteString.CopyFrom(1, 2, 3, 4) } }),
            _ => Frame(new DataFrame { End = new DataEnd() }),
        };
        await stream.WriteAsync(frame);
        await stream.FlushAsync();
        Assert.Equal(0, await DataPortProbe.ReadUntilClosedAsync(stream, Timeout));
    }

    [Fact]
    public async Task Pushes_and_pulls_over_the_data_port_apply_like_grpc_and_refusals_keep_their_status()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Tcp);
        float[] initial = [.. Enumerable.Range(0, Elements).Select(i => i / 1000f)];
        var reply = await client.InitializeAsync(InitializeHeader("job-tcp"), initial, CancellationToken.None);
        Assert.Equal(server.DataUrl, reply.DataAddress);
        Assert.Equal(server.DataUrl, client.DataAddress);

        // Unknown job: NotFound, as over gRPC; the connection stays usable for the next exchange.
        var missing = await Assert.ThrowsAsync<RpcException>(() =>
            client.PushAsync(new PushHeader { JobId = "no-such-job", Rank = 0, Step = 0, SampleCount = 1 }, Chunks(new float[Elements]), CancellationToken.None));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        // A step the server is not at: Aborted (the worker resynchronises).
        var ahead = await Assert.ThrowsAsync<RpcException>(() =>
            client.PushAsync(new PushHeader { JobId = "job-tcp", Rank = 0, Step = 5, SampleCount = 1 }, Chunks(new float[Elements]), CancellationToken.None));
        Assert.Equal(StatusCode.Aborted, ahead.StatusCode);
        // Chunks that skip elements: InvalidArgument naming the field.
        var gap = await Assert.ThrowsAsync<RpcException>(() => client.PushAsync(new PushHeader { JobId = "job-tcp", Rank = 0, Step = 0, SampleCount = 1 },
            [new TensorChunk { OffsetElements = 10, Data = ByteString.CopyFrom(new byte[40]) }], CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, gap.StatusCode);
        Assert.Contains("chunk.offset_elements: 10; expected 0", gap.Status.Detail, StringComparison.Ordinal);

        // Step 0 (world size 2): both ranks push, rank 1 in bfloat16; version 1 is the mean applied by SGD.
        float[] gradient = [.. Enumerable.Range(0, Elements).Select(i => (i % 7) - 3f)];
        // The pull says which ranks made up step 0 before any of its chunks arrives.
        float[] waiting = new float[Elements];
        var applied = new TaskCompletionSource<(int[] Ranks, bool AnyChunk)>();
        var pull = client.PullAsync("job-tcp", 1, DType.Float32, waiting, CancellationToken.None,
            () => applied.TrySetResult(([.. client.LastApplied.Steps.Single(s => s.Step == 0).Ranks], waiting.Any(v => v != 0))));
        var first = await client.PushAsync(new PushHeader { JobId = "job-tcp", Rank = 0, Step = 0, SampleCount = 1 }, Chunks(gradient), CancellationToken.None);
        Assert.Equal(0, first.Version);
        // A repeated push (a retry after a lost reply) is acknowledged and applied once.
        await client.PushAsync(new PushHeader { JobId = "job-tcp", Rank = 0, Step = 0, SampleCount = 1 }, Chunks(gradient), CancellationToken.None);
        byte[] bf16 = new byte[Elements * 2];
        ElementCodec.Encode(gradient, bf16, DType.Bfloat16);
        await client.PushAsync(new PushHeader { JobId = "job-tcp", Rank = 1, Step = 0, SampleCount = 1, Dtype = DType.Bfloat16 },
            TensorWire.Chunks(bf16, 0, 2, 1000), CancellationToken.None);
        await pull.WaitAsync(Timeout);
        Assert.True(applied.Task.IsCompleted, "the pull ended without saying which ranks made up step 0");
        var (ranks, anyChunk) = await applied.Task;
        Assert.Equal([0, 1], ranks);
        Assert.False(anyChunk, "the pull's chunks came before it said which ranks made up step 0");

        float[] pulled = new float[Elements];
        await client.PullAsync("job-tcp", 1, DType.Float32, pulled, CancellationToken.None);
        for (int i = 0; i < Elements; i++) Assert.Equal(initial[i] - 0.1f * gradient[i], pulled[i], 1e-6f);
        Assert.Equal(new[] { 0, 1 }, client.LastApplied.Steps.Single(s => s.Step == 0).Ranks);
        Assert.Equal(pulled, server.Store.Find("job-tcp")!.WeightsAsFloats.ToArray());

        // A pull in bfloat16 decodes to the weights rounded to bfloat16.
        float[] rounded = new float[Elements];
        await client.PullAsync("job-tcp", 1, DType.Bfloat16, rounded, CancellationToken.None);
        for (int i = 0; i < Elements; i++) Assert.Equal(pulled[i], rounded[i], Math.Abs(pulled[i]) / 128 + 1e-6f);
    }

    [Fact]
    public async Task A_gradient_with_NaN_over_the_data_port_is_refused_and_counted()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Tcp);
        var header = InitializeHeader("job-nan");
        header.WorldSize = 1;
        await client.InitializeAsync(header, new float[Elements], CancellationToken.None);
        float[] gradient = new float[Elements];
        gradient[17] = float.NaN;
        var reply = await client.PushAsync(new PushHeader { JobId = "job-nan", Rank = 0, Step = 0, SampleCount = 1 }, Chunks(gradient), CancellationToken.None);
        Assert.True(reply.Rejected);
        Assert.Equal(1, server.Store.Find("job-nan")!.RejectedGradients);
    }


    /// <summary>A job of one tensor of <paramref name="elements"/> trained with SGD at learning rate 0.1.</summary>
    [Fact]
    public async Task A_pull_blocked_on_a_version_that_never_comes_ends_at_its_deadline_or_when_cancelled_and_the_next_pull_connects_afresh()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using (var setup = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Tcp))
            await setup.InitializeAsync(InitializeHeader("job-blocked", worldSize: 1), new float[Elements], CancellationToken.None);
        using var client = new ParameterDataClient(server.DataUrl, TestSecurity.Loopback, Timeout);
        var never = new PullRequest { JobId = "job-blocked", MinVersion = 5, Dtype = DType.Float32 };

        // The pull's calls block the thread that makes them: the deadline closes the connection under the read.
        var waited = System.Diagnostics.Stopwatch.StartNew();
        var late = await Assert.ThrowsAsync<Shared.Rpc.PeerUnreachableException>(() =>
            Task.Run(() => client.PullAsync(never, new float[Elements], TimeSpan.FromSeconds(1), CancellationToken.None)));
        Assert.Contains($"data port at {server.DataUrl} did not answer within 1 s", late.Message, StringComparison.Ordinal);
        Assert.InRange(waited.Elapsed.TotalSeconds, 0.8, 10);

        // The caller's token does the same, and the pull ends as cancelled.
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        waited.Restart();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            Task.Run(() => client.PullAsync(never, new float[Elements], Timeout, cancel.Token)));
        Assert.InRange(waited.Elapsed.TotalSeconds, 0.2, 10);

        // The server saw both connections close and gave up the pulls they left waiting: no connection is still served.
        var deadline = DateTime.UtcNow + Timeout;
        while (server.DataPortConnections > 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal(0, server.DataPortConnections);

        // Neither left a broken connection behind: the next pull gets version 0.
        float[] pulled = [.. Enumerable.Repeat(1f, Elements)];
        await client.PullAsync(new PullRequest { JobId = "job-blocked", MinVersion = 0, Dtype = DType.Float32 }, pulled, Timeout, CancellationToken.None);
        Assert.All(pulled, value => Assert.Equal(0f, value));
    }

    internal static InitializeHeader InitializeHeader(string jobId, int elements = Elements, int worldSize = 2)
    {
        var layout = new TensorLayout();
        layout.Tensors.Add(new TensorSpec { Name = "w", Shape = { elements }, Dtype = DType.Float32 });
        return new InitializeHeader
        {
            JobId = jobId, WorldSize = worldSize, Layout = layout, Dtype = DType.Float32, RangeStart = 0, RangeElements = elements,
            Optimizer = new OptimizerSettings { Kind = "sgd", LearningRate = 0.1 }.ToProto(),
        };
    }

    private static IEnumerable<TensorChunk> Chunks(float[] values) => TensorWire.Chunks(FloatMemory.AsBytes(values), chunkBytes: 4000);

    private static byte[] Header(IMessage message) => message.ToByteArray();

    private static byte[] Lengths(int header, int data)
    {
        byte[] lengths = new byte[8];
        BinaryPrimitives.WriteInt32LittleEndian(lengths, header);
        BinaryPrimitives.WriteInt32LittleEndian(lengths.AsSpan(4), data);
        return lengths;
    }

    private static byte[] Frame(IMessage message) => [.. Lengths(message.CalculateSize(), 0), .. Header(message)];

    private static async Task<NetworkStream> ConnectAsync(string address)
    {
        var uri = new Uri(address);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(uri.Host, uri.Port);
        return new NetworkStream(socket, ownsSocket: true);
    }
}
