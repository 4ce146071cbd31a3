using System.Runtime.InteropServices;
using Cluster.ParameterServer;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Tests.Unit.Security;
using Grpc.Core;

namespace Cluster.Tests.Unit.Optimizers;

/// <summary>The parameter server's Initialize with parameter groups: bad groups are refused with InvalidArgument naming the group.</summary>
[Trait("Tier", "unit")]
public sealed class ParameterGroupInitializeTests
{
    private const int Elements = 16;

    [Theory]
    [InlineData(0, 20, "groups.g: elements [0, 20) are out of range")]
    [InlineData(-1, 4, "groups.g: elements [-1, 3) are out of range")]
    [InlineData(4, 0, "groups.g: elements [4, 4) are out of range")]
    public async Task A_group_outside_the_model_is_refused(long start, long elements, string expected)
    {
        var error = await Assert.ThrowsAsync<RpcException>(() => InitializeAsync(new ParameterGroup
        {
            Name = "g", Start = start, Elements = elements, Optimizer = new OptimizerConfig { Kind = "adam", LearningRate = 1e-3, Beta2 = 0.999 },
        }));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(expected, error.Status.Detail);
    }

    [Fact]
    public async Task A_group_without_an_optimizer_is_refused()
    {
        var error = await Assert.ThrowsAsync<RpcException>(() => InitializeAsync(new ParameterGroup { Name = "g", Start = 0, Elements = 4 }));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("groups.g: optimizer missing", error.Status.Detail);
    }

    [Fact]
    public async Task Valid_groups_create_the_job()
    {
        var store = await InitializeAsync(
            new ParameterGroup { Name = "generator", Start = 0, Elements = 6, Optimizer = new OptimizerConfig { Kind = "adam", LearningRate = 2e-4, Beta1 = 0.5, Beta2 = 0.999 } },
            new ParameterGroup { Name = "discriminator", Start = 6, Elements = 10, Optimizer = new OptimizerConfig { Kind = "adam", LearningRate = 2e-4, Beta1 = 0.5, Beta2 = 0.999 } });
        Assert.NotNull(store.Find("job-g"));
    }

    private static async Task<ParameterStore> InitializeAsync(params ParameterGroup[] groups)
    {
        var store = new ParameterStore();
        var service = new ParameterServerService(store, new ParameterServerOptions());
        var layout = new TensorLayout();
        layout.Tensors.Add(new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 });
        var header = new InitializeHeader
        {
            JobId = "job-g", WorldSize = 1, Layout = layout, RangeStart = 0, RangeElements = Elements,
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 0.1 },
        };
        header.Groups.AddRange(groups);
        byte[] data = MemoryMarshal.AsBytes(new float[Elements].AsSpan()).ToArray();
        InitializeMessage[] messages = [new() { Header = header }, .. Shared.Wire.TensorWire.Chunks(data).Select(c => new InitializeMessage { Chunk = c })];
        await service.Initialize(new ListStream<InitializeMessage>(messages), new TestCallContext(CancellationToken.None));
        return store;
    }
}
