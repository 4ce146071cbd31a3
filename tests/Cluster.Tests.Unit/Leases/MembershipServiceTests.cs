using System.Runtime.InteropServices;
using Cluster.ParameterServer;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Tests.Unit.Security;
using Grpc.Core;

namespace Cluster.Tests.Unit.Leases;

/// <summary>
/// The parameter server's side of the leases through its gRPC handlers (no network): every pull
/// ends with the ranks behind the steps just applied, RemoveRank lets the barrier go on, and
/// JoinRank adds a rank at a step boundary.
/// </summary>
[Trait("Tier", "unit")]
public sealed class MembershipServiceTests
{
    private const int Elements = 8;
    private readonly ParameterStore _store = new();
    private readonly ParameterServerService _service;

    public MembershipServiceTests() => _service = new ParameterServerService(_store, new ParameterServerOptions());

    private async Task<JobParameters> InitializeAsync()
    {
        var layout = new TensorLayout();
        layout.Tensors.Add(new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 });
        var header = new InitializeHeader
        {
            JobId = "job-l", WorldSize = 2, Layout = layout, RangeStart = 0, RangeElements = Elements,
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 1 },
        };
        await _service.Initialize(new ListStream<InitializeMessage>(
            [new InitializeMessage { Header = header }, .. Shared.Wire.TensorWire.Chunks(Floats(1f)).Select(c => new InitializeMessage { Chunk = c })]), Context());
        return _store.Find("job-l")!;
    }

    private Task PushAsync(int rank, long step) =>
        _service.PushGradients(new ListStream<PushMessage>(
            [new PushMessage { Header = new PushHeader { JobId = "job-l", Rank = rank, Step = step, SampleCount = 2 } },
             .. Shared.Wire.TensorWire.Chunks(Floats(0.5f)).Select(c => new PushMessage { Chunk = c })]), Context());

    private async Task<AppliedSteps> PullAppliedAsync(long minVersion)
    {
        var writer = new ListWriter<PullMessage>();
        await _service.PullParameters(new PullRequest { JobId = "job-l", MinVersion = minVersion }, writer, Context()).WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(PullMessage.BodyOneofCase.Applied, writer.Written[^1].BodyCase);
        return writer.Written[^1].Applied;
    }

    private static byte[] Floats(float value) => MemoryMarshal.AsBytes(Enumerable.Repeat(value, Elements).ToArray().AsSpan()).ToArray();

    private static TestCallContext Context() => new(CancellationToken.None);

    [Fact]
    public async Task A_pull_ends_with_the_ranks_of_the_applied_steps_and_a_removed_rank_no_longer_holds_up_the_barrier()
    {
        await InitializeAsync();
        await PushAsync(0, 0);
        await PushAsync(1, 0);
        var first = await PullAppliedAsync(1);
        Assert.Equal([(0L, new[] { 0, 1 })], first.Steps.Select(s => (s.Step, s.Ranks.ToArray())));

        await PushAsync(0, 1);
        var removed = await _service.RemoveRank(new RemoveRankRequest { JobId = "job-l", Rank = 1 }, Context());
        Assert.Equal((true, 1L), (removed.Removed, removed.UntilStep));

        var second = await PullAppliedAsync(2);
        Assert.Equal([(0L, new[] { 0, 1 }), (1L, new[] { 0 })], second.Steps.Select(s => (s.Step, s.Ranks.ToArray())));
        var refused = await Assert.ThrowsAsync<RpcException>(() => PushAsync(1, 2));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.False((await _service.RemoveRank(new RemoveRankRequest { JobId = "job-l", Rank = 1 }, Context())).Removed);
    }

    [Fact]
    public async Task A_join_is_refused_for_a_step_already_passed_and_accepted_for_the_next()
    {
        var job = await InitializeAsync();
        await PushAsync(0, 0);
        await PushAsync(1, 0);
        await job.WaitForVersionAsync(1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));

        var late = await _service.JoinRank(new JoinRankRequest { JobId = "job-l", Rank = 2, FromStep = 0 }, Context());
        var joined = await _service.JoinRank(new JoinRankRequest { JobId = "job-l", Rank = 2, FromStep = 2 }, Context());

        Assert.Equal((false, 1L), (late.Joined, late.Version));
        Assert.Equal((true, 1L), (joined.Joined, joined.Version));
        Assert.Equal([0, 1], job.Members(1));
        Assert.Equal([0, 1, 2], job.Members(2));
        var missing = await Assert.ThrowsAsync<RpcException>(() => _service.RemoveRank(new RemoveRankRequest { JobId = "job-x", Rank = 0 }, Context()));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
    }
}
