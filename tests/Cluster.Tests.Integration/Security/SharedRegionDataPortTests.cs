using System.Net.Sockets;
using Cluster.ParameterServer;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Training;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// The data port's shared region (worker --ps-transport shm): a worker on the server's host
/// pushes and pulls through it with exactly the results of the socket, leaves no file behind,
/// falls back to the socket when the server offers no region or one it cannot map, and a
/// chunk whose slice lies outside the region closes the connection without an answer. A server
/// starting removes the regions of servers that are gone.
/// </summary>
[Trait("Tier", "integration")]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class SharedRegionDataPortTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private const int Elements = 600_000; // 2.4 MB: pushes and pulls of several 1 MiB chunks

    [Fact]
    public async Task Steps_through_a_shared_region_end_with_the_weights_of_the_same_steps_through_the_socket()
    {
        Assert.NotNull(SharedRegion.DirectoryOnThisHost);
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using var shm = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Shm);
        using var tcp = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Tcp);
        float[] initial = [.. Enumerable.Range(0, Elements).Select(i => MathF.Sin(i) / 10)];
        await shm.InitializeAsync(InitializeHeader("job-shm"), initial, CancellationToken.None);
        await tcp.InitializeAsync(InitializeHeader("job-tcp"), initial, CancellationToken.None);

        float[] viaRegion = new float[Elements], viaSocket = new float[Elements];
        for (int step = 0; step < 3; step++)
        {
            float[] gradient = [.. Enumerable.Range(0, Elements).Select(i => MathF.Cos(i * (step + 1)))];
            // Pushes in float32 (whole 1 MiB chunks) and in bfloat16 (kept encoded by the server), pulls in both.
            var dtype = step == 1 ? DType.Bfloat16 : DType.Float32;
            foreach (var (client, job) in new[] { (shm, "job-shm"), (tcp, "job-tcp") })
            {
                var push = await client.PushAsync(new PushHeader { JobId = job, Rank = 0, Step = step, SampleCount = 1, Dtype = dtype }, Chunks(gradient, dtype),
                    CancellationToken.None);
                Assert.False(push.Rejected);
            }
            var pullType = step == 2 ? DType.Bfloat16 : DType.Float32;
            await shm.PullAsync("job-shm", step + 1, pullType, viaRegion, CancellationToken.None);
            await tcp.PullAsync("job-tcp", step + 1, pullType, viaSocket, CancellationToken.None);
            Assert.Equal(viaSocket, viaRegion);
        }
        Assert.True(shm.SharesRegion, $"the shm client shares no region: {shm.RegionRefusal}");
        Assert.False(tcp.SharesRegion);
        Assert.Null(tcp.RegionRefusal);
        Assert.Equal(server.Store.Find("job-tcp")!.WeightsAsFloats.ToArray(), server.Store.Find("job-shm")!.WeightsAsFloats.ToArray());
        // The names went as soon as the worker had mapped them: nothing of this process is left in /dev/shm.
        Assert.Empty(Directory.GetFiles(SharedRegion.DirectoryOnThisHost!, $"cluster-ps-{Environment.ProcessId}-*"));
    }

    [Fact]
    public async Task A_server_with_no_region_or_one_the_worker_cannot_map_is_served_through_the_socket()
    {
        string elsewhere = Directory.CreateTempSubdirectory("region-elsewhere-").FullName;
        try
        {
            // No region directory: the server says so.
            await using (var server = await ParameterServerHost.StartAsync(
                new ParameterServerOptions { Security = TestSecurity.Loopback, SharedRegionDirectory = null }, CancellationToken.None))
            {
                string refusal = await PushAndPullAsync(server);
                Assert.Contains("the server offers none: this server makes no shared regions", refusal, StringComparison.Ordinal);
            }
            // A region the worker cannot open where it looks (as for a server in another container): mapped by the server only, its name removed.
            // The server also removes, as it starts, a region left by a server that was killed (a process that has exited).
            using (var exited = System.Diagnostics.Process.Start("true")!)
            {
                await exited.WaitForExitAsync();
                await File.WriteAllBytesAsync(Path.Combine(elsewhere, $"cluster-ps-{exited.Id}-{new string('c', 32)}"), new byte[64]);
            }
            await using (var server = await ParameterServerHost.StartAsync(
                new ParameterServerOptions { Security = TestSecurity.Loopback, SharedRegionDirectory = elsewhere }, CancellationToken.None))
            {
                string refusal = await PushAndPullAsync(server);
                Assert.Contains("could not map the server's region", refusal, StringComparison.Ordinal);
                Assert.Empty(Directory.GetFiles(elsewhere));
            }
            // A region larger than the server's largest model is not made.
            await using (var server = await ParameterServerHost.StartAsync(
                new ParameterServerOptions { Security = TestSecurity.Loopback, ModelBytesMax = 1000 }, CancellationToken.None))
            {
                await using var stream = await ConnectAsync(server.DataUrl);
                var (region, detail) = await ParameterDataProtocol.RequestRegionAsync(stream, stream, new FrameBuffers(), 4000, SharedRegion.DefaultDirectory,
                    CancellationToken.None);
                Assert.Null(region);
                Assert.Contains("region_request.bytes 4000; expected 1 to 1000", detail, StringComparison.Ordinal);
            }
        }
        finally
        {
            Directory.Delete(elsewhere, recursive: true);
        }
    }

    [Fact]
    public async Task A_chunk_outside_the_region_closes_the_connection_and_a_second_region_request_too()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using (var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Tcp))
            await client.InitializeAsync(InitializeHeader("job-bounds"), new float[Elements], CancellationToken.None);

        foreach (var violation in new[] { "outside", "second request" })
        {
            await using var stream = await ConnectAsync(server.DataUrl);
            var buffers = new FrameBuffers();
            var (region, detail) = await ParameterDataProtocol.RequestRegionAsync(stream, stream, buffers, 4000, SharedRegion.DefaultDirectory, CancellationToken.None);
            Assert.True(region is not null, detail);
            try
            {
                if (violation == "outside")
                {
                    await ParameterDataProtocol.WriteAsync(stream, new DataFrame { PushHeader = new PushHeader { JobId = "job-bounds", Rank = 0, Step = 0, SampleCount = 1 } },
                        CancellationToken.None);
                    await ParameterDataProtocol.WriteAsync(stream, new DataFrame { Chunk = new TensorChunk(), Region = new RegionSlice { Offset = 3996, Bytes = 8 } },
                        CancellationToken.None);
                }
                else
                {
                    await ParameterDataProtocol.WriteAsync(stream, new DataFrame { RegionRequest = new SharedRegionRequest { Bytes = 4000 } }, CancellationToken.None);
                }
                await stream.FlushAsync();
                Assert.Equal(0, await DataPortProbe.ReadUntilClosedAsync(stream, Timeout));
            }
            finally
            {
                region!.Release();
            }
        }
        Assert.Equal(0, server.Store.Find("job-bounds")!.Version);
    }

    /// <summary>One step over an shm client whose connection gets no region; returns why it got none.</summary>
    private static async Task<string> PushAndPullAsync(ParameterServerHost server)
    {
        using var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout, ParameterServerTransport.Shm);
        var header = InitializeHeader("job-fallback");
        await client.InitializeAsync(header, new float[Elements], CancellationToken.None);
        float[] gradient = [.. Enumerable.Range(0, Elements).Select(i => (float)(i % 5))];
        await client.PushAsync(new PushHeader { JobId = "job-fallback", Rank = 0, Step = 0, SampleCount = 1 }, Chunks(gradient, DType.Float32), CancellationToken.None);
        float[] pulled = new float[Elements];
        await client.PullAsync("job-fallback", 1, DType.Float32, pulled, CancellationToken.None);
        for (int i = 0; i < Elements; i += 9973) Assert.Equal(-0.1f * gradient[i], pulled[i], 1e-6f);
        Assert.False(client.SharesRegion);
        return client.RegionRefusal!;
    }

    private static InitializeHeader InitializeHeader(string jobId) => ParameterDataPortTests.InitializeHeader(jobId, Elements, worldSize: 1);

    private static IEnumerable<TensorChunk> Chunks(float[] values, DType dtype)
    {
        if (dtype == DType.Float32) return TensorWire.Chunks(FloatMemory.AsBytes(values), chunkBytes: TensorWire.ChunkBytesMax);
        byte[] encoded = new byte[values.Length * ElementCodec.ElementBytes(dtype)];
        ElementCodec.Encode(values, encoded, dtype);
        return TensorWire.Chunks(encoded, 0, ElementCodec.ElementBytes(dtype), TensorWire.ChunkBytesMax);
    }

    private static async Task<NetworkStream> ConnectAsync(string address)
    {
        var uri = new Uri(address);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(uri.Host, uri.Port);
        var stream = new NetworkStream(socket, ownsSocket: true);
        await ParameterDataProtocol.Handshake.ConnectAsync(stream, TestSecurity.Secret, ReadOnlyMemory<byte>.Empty, CancellationToken.None);
        return stream;
    }
}
