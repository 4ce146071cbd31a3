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
/// of a BSP job says which ranks made up the steps just applied, before its chunks and as soon as
/// the step's pushes are complete; RemoveRank lets the barrier go on, and JoinRank adds a rank at
/// a step boundary.
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

    /// <summary>A pull's AppliedSteps, checked to come right after its header and before every chunk.</summary>
    private async Task<AppliedSteps> PullAppliedAsync(long minVersion)
    {
        var writer = new ListWriter<PullMessage>();
        await _service.PullParameters(new PullRequest { JobId = "job-l", MinVersion = minVersion }, writer, Context()).WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal([PullMessage.BodyOneofCase.Header, PullMessage.BodyOneofCase.Applied], writer.Written.Take(2).Select(m => m.BodyCase));
        Assert.All(writer.Written.Skip(2), m => Assert.Equal(PullMessage.BodyOneofCase.Chunk, m.BodyCase));
        return writer.Written[1].Applied;
    }

    private static byte[] Floats(float value) => MemoryMarshal.AsBytes(Enumerable.Repeat(value, Elements).ToArray().AsSpan()).ToArray();

    private static TestCallContext Context() => new(CancellationToken.None);

    [Fact]
    public async Task A_pull_starts_with_the_ranks_of_the_applied_steps_and_a_removed_rank_no_longer_holds_up_the_barrier()
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
    public async Task A_pull_says_which_ranks_made_up_the_step_only_once_every_push_of_it_is_complete()
    {
        var job = await InitializeAsync();
        await PushAsync(0, 0);
        var writer = new ListWriter<PullMessage>();
        var pull = _service.PullParameters(new PullRequest { JobId = "job-l", MinVersion = 1 }, writer, Context());

        await Task.Delay(200);
        int writtenBefore = writer.Written.Count;
        await PushAsync(1, 0);
        await pull.WaitAsync(TimeSpan.FromSeconds(5));

        Assert.Equal(1, writtenBefore); // the header only: rank 1's push of step 0 was still missing
        Assert.Equal([(0L, new[] { 0, 1 })], writer.Written[1].Applied.Steps.Select(s => (s.Step, s.Ranks.ToArray())));
        Assert.Equal(1, job.Version);
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
