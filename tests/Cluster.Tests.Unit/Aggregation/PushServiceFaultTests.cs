using System.Runtime.InteropServices;
using Cluster.ParameterServer;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Tests.Unit.Security;
using Grpc.Core;

namespace Cluster.Tests.Unit.Aggregation;

/// <summary>
/// The gRPC adapter's answers to the faults a worker recovers from: a repeated push is OK and
/// applied once, a NaN push is OK with <c>rejected</c> set and applied never, and a push ahead of
/// the server (restarted from an older checkpoint) is ABORTED naming the server's version.
/// </summary>
[Trait("Tier", "unit")]
public sealed class PushServiceFaultTests
{
    private const int Elements = 8;

    private static async Task<(ParameterServerService Service, JobParameters Job)> StartAsync()
    {
        var store = new ParameterStore();
        var service = new ParameterServerService(store, new ParameterServerOptions());
        var header = new InitializeHeader
        {
            JobId = "job-f", WorldSize = 2, RangeElements = Elements, PartitionElements = 4,
            Layout = new TensorLayout { Tensors = { new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 } } },
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 1 },
        };
        await service.Initialize(new ListStream<InitializeMessage>(
            [new InitializeMessage { Header = header }, .. Shared.Wire.TensorWire.Chunks(Bytes(Filled(10f))).Select(c => new InitializeMessage { Chunk = c })]),
            new TestCallContext(CancellationToken.None));
        return (service, store.Find("job-f")!);
    }

    private static float[] Filled(float value) => Enumerable.Repeat(value, Elements).ToArray();

    private static byte[] Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    private static Task<PushReply> Push(ParameterServerService service, int rank, long step, float[] gradient) =>
        service.PushGradients(new ListStream<PushMessage>(
            [new PushMessage { Header = new PushHeader { JobId = "job-f", Rank = rank, Step = step, SampleCount = 1 } },
             .. Shared.Wire.TensorWire.Chunks(Bytes(gradient)).Select(c => new PushMessage { Chunk = c })]),
            new TestCallContext(CancellationToken.None));

    [Fact]
    public async Task A_repeated_push_is_acknowledged_and_applied_once()
    {
        var (service, job) = await StartAsync();

        await Push(service, 0, 0, Filled(2f));
        var repeat = await Push(service, 0, 0, Filled(100f));
        await Push(service, 1, 0, Filled(4f));
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));

        Assert.Equal(0, repeat.Version);
        Assert.False(repeat.Rejected);
        Assert.Equal(Filled(7f), job.WeightsAsFloats.ToArray()); // 10 - mean(2, 4)
        Assert.Equal(1, job.DuplicatePushes);
    }

    [Fact]
    public async Task A_nan_push_is_acknowledged_as_rejected_and_its_partition_left_out()
    {
        var (service, job) = await StartAsync();
        var gradient = Filled(2f);
        gradient[5] = float.NaN;

        var reply = await Push(service, 0, 0, gradient);
        await Push(service, 1, 0, Filled(4f));
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));

        Assert.True(reply.Rejected);
        Assert.Equal(1, job.RejectedGradients);
        // Partition 0 (elements 0-3): mean of 2 and 4; partition 1: rank 1's 4 alone.
        Assert.Equal([7f, 7f, 7f, 7f, 6f, 6f, 6f, 6f], job.WeightsAsFloats.ToArray());
    }

    [Fact]
    public async Task A_push_ahead_of_the_server_is_aborted_naming_its_step()
    {
        var (service, job) = await StartAsync();

        var error = await Assert.ThrowsAsync<RpcException>(() => Push(service, 0, 7, Filled(1f)));

        Assert.Equal(StatusCode.Aborted, error.StatusCode);
        Assert.StartsWith("step: 7 is not the current step 0", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(Filled(10f), job.WeightsAsFloats.ToArray());
    }
}
