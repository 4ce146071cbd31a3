using System.Net;
using System.Net.Http.Json;
using System.Runtime.InteropServices;
using Cluster.Coordinator;
using Cluster.Coordinator.Jobs;
using Cluster.ParameterServer;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Cluster.Shared.Jobs;
using Cluster.Shared.Security;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Training;
using Google.Protobuf;
using Grpc.Core;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// Limits and bad input over real gRPC and HTTP: an oversized message, a gradient of the wrong
/// length, a model over the server's limit, a full queue and an oversized request body are each
/// refused with a clear error, and the model and the job they aimed at are unharmed.
/// </summary>
[Trait("Tier", "integration")]
public sealed class LimitTests
{
    private const int Elements = 1000;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task An_oversized_message_and_a_gradient_of_the_wrong_length_are_refused_and_the_model_is_unharmed()
    {
        await using var server = await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout);
        float[] initial = Enumerable.Repeat(1f, Elements).ToArray();
        await client.InitializeAsync(Header("job-limits"), initial, CancellationToken.None);
        var job = server.Store.Find("job-limits")!;

        // A chunk of 5 MiB: over the server's 4 MiB message limit.
        using var channel = ClusterTransport.Channel(server.Url, TestSecurity.Loopback, "parameter server");
        var raw = new Protos.ParameterServer.ParameterServerClient(channel);
        using var call = raw.PushGradients(deadline: DateTime.UtcNow + Timeout);
        try
        {
            await call.RequestStream.WriteAsync(new PushMessage { Header = Push("job-limits", rank: 0) });
            await call.RequestStream.WriteAsync(new PushMessage { Chunk = new TensorChunk { Data = ByteString.CopyFrom(new byte[5 << 20]) } });
            await call.RequestStream.CompleteAsync();
        }
        catch (RpcException) { } // the server may end the call while the client still writes; its answer says why
        catch (InvalidOperationException) { }
        var oversized = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, oversized.StatusCode);
        Assert.Contains("exceeds the maximum configured message size", oversized.Status.Detail, StringComparison.Ordinal);

        // A gradient with half the elements.
        var shortPush = await Assert.ThrowsAsync<RpcException>(() => client.PushAsync(Push("job-limits", rank: 0), Chunks(new float[Elements / 2]), CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, shortPush.StatusCode);
        Assert.Equal($"chunks: {Elements / 2} elements received; job job-limits has {Elements}", shortPush.Status.Detail);

        // A gradient with twice the elements.
        var longPush = await Assert.ThrowsAsync<RpcException>(() => client.PushAsync(Push("job-limits", rank: 1), Chunks(new float[Elements * 2]), CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, longPush.StatusCode);
        Assert.Contains("runs outside the vector of 1000 elements", longPush.Status.Detail, StringComparison.Ordinal);

        // Unharmed: same weights, same version, and both ranks can still complete the step.
        Assert.Equal(0, job.Version);
        Assert.Equal(initial, job.WeightsAsFloats.ToArray());
        float[] gradient = Enumerable.Repeat(0.5f, Elements).ToArray();
        Assert.Equal(0, (await client.PushAsync(Push("job-limits", rank: 0), Chunks(gradient), CancellationToken.None)).Version);
        await client.PushAsync(Push("job-limits", rank: 1), Chunks(gradient), CancellationToken.None);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(Timeout);
        Assert.All(job.WeightsAsFloats.ToArray(), w => Assert.Equal(1f - 0.1f * 0.5f, w, 6));
    }

    [Fact]
    public async Task A_model_over_the_servers_limit_is_refused_naming_the_limit()
    {
        await using var server = await ParameterServerHost.StartAsync(
            new ParameterServerOptions { Security = TestSecurity.Loopback, ModelBytesMax = 2000 }, CancellationToken.None);
        using var client = new ParameterServerClient(server.Url, TestSecurity.Loopback, Timeout, Timeout, Timeout);

        var refused = await Assert.ThrowsAsync<RpcException>(() => client.InitializeAsync(Header("big"), new float[Elements], CancellationToken.None));

        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal("range_elements: 1000 float32 elements (4000 bytes) exceed this server's limit of 2000 bytes per job", refused.Status.Detail);
        Assert.Null(server.Store.Find("big"));
    }

    [Fact]
    public async Task An_oversized_message_to_the_coordinator_is_refused_and_the_job_keeps_running()
    {
        await using var coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        coordinator.Board.RegisterServer("http://127.0.0.1:9");
        using var channel = ClusterTransport.Channel(coordinator.GrpcUrl, TestSecurity.Loopback, "coordinator");
        var client = new Protos.Coordinator.CoordinatorClient(channel);
        var worker = await client.RegisterWorkerAsync(new RegisterWorkerRequest { Host = "test", Device = "cpu", ProcessId = 1 });
        var job = coordinator.Board.Submit(new JobSpecification { Workers = 1 });
        var assignment = await client.GetAssignmentAsync(new GetAssignmentRequest { WorkerId = worker.WorkerId, WaitMillis = 5000 });
        Assert.Equal(job.Id, assignment.Assignment.JobId);

        var refused = await Assert.ThrowsAsync<RpcException>(async () => await client.ReportFailureAsync(
            new ReportFailureRequest { JobId = job.Id, Rank = 0, Message = new string('x', 5 << 20) }, deadline: DateTime.UtcNow + Timeout));

        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("exceeds the maximum configured message size", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(JobState.Running, coordinator.Board.Read((jobs, _) => jobs[job.Id].State));
    }

    [Fact]
    public async Task A_full_queue_and_an_oversized_body_are_refused_with_clear_errors()
    {
        await using var coordinator = await CoordinatorHost.StartAsync(
            new CoordinatorOptions { Security = TestSecurity.Loopback, QueuedJobsMax = 2 }, CancellationToken.None);
        using var http = TestSecurity.HttpClient();
        var spec = new JobSpecification { Workers = 1 };
        for (int i = 0; i < 2; i++)
            Assert.Equal(HttpStatusCode.Created, (await http.PostAsJsonAsync(coordinator.HttpUrl + "/api/jobs", spec)).StatusCode);

        using var full = await http.PostAsJsonAsync(coordinator.HttpUrl + "/api/jobs", spec);
        Assert.Equal(HttpStatusCode.TooManyRequests, full.StatusCode);
        Assert.Contains("queue: 2 jobs are already waiting (the limit)", await full.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        using var huge = await http.PostAsync(coordinator.HttpUrl + "/api/jobs", new StringContent(new string(' ', 80_000) + "{}", System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, huge.StatusCode);
        Assert.Contains("a job specification is at most 65536 bytes", await huge.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(2, coordinator.Board.Read((jobs, _) => jobs.Count));
    }

    private static InitializeHeader Header(string jobId)
    {
        var layout = new TensorLayout();
        layout.Tensors.Add(new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 });
        return new InitializeHeader
        {
            JobId = jobId, WorldSize = 2, Layout = layout, Dtype = DType.Float32, RangeStart = 0, RangeElements = Elements,
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 0.1 },
        };
    }

    private static IEnumerable<TensorChunk> Chunks(float[] values) => TensorWire.Chunks(FloatMemory.AsBytes(values));

    private static PushHeader Push(string jobId, int rank) =>
        new() { JobId = jobId, Rank = rank, Step = 0, SampleCount = 8, Dtype = DType.Float32 };
}
