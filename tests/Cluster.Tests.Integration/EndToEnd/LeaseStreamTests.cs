using System.Diagnostics;
using Cluster.Coordinator;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Shared.Security;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Training;
using Grpc.Core;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>
/// Leases on one stream (coordinator.proto, LeaseShards; the worker's <see cref="LeaseStream"/>)
/// over real gRPC: every reply is the one LeaseShard gives for the same request, a refusal comes
/// back with LeaseShard's status and ends only that stream, and a stream left open when the
/// coordinator stops ends at once (it does not hold the shutdown up) with a status the worker's
/// retry treats as "ask again".
/// </summary>
[Trait("Tier", "integration")]
public sealed class LeaseStreamTests
{
    private const int Samples = 640;

    private static DateTime Deadline() => DateTime.UtcNow.AddSeconds(30);

    /// <summary>A coordinator holding one running "ps" job of one rank, and a client of it.</summary>
    private static async Task<(CoordinatorHost Coordinator, Protos.Coordinator.CoordinatorClient Client, string JobId, IDisposable Channel)> StartAsync()
    {
        var coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        coordinator.Board.RegisterServer("http://127.0.0.1:9");
        var channel = ClusterTransport.Channel(coordinator.GrpcUrl, TestSecurity.Loopback, "coordinator");
        var client = new Protos.Coordinator.CoordinatorClient(channel);
        var worker = await client.RegisterWorkerAsync(new RegisterWorkerRequest { Host = "test", Device = "cpu", ProcessId = 1 });
        var job = coordinator.Board.Submit(new JobSpecification { Workers = 1, BatchSize = 64 });
        var assignment = await client.GetAssignmentAsync(new GetAssignmentRequest { WorkerId = worker.WorkerId, WaitMillis = 5000 });
        Assert.Equal(job.Id, assignment.Assignment.JobId);
        return (coordinator, client, job.Id, channel);
    }

    private static LeaseShardRequest Request(string jobId, long step, params long[] appliedSteps)
    {
        var request = new LeaseShardRequest { JobId = jobId, Rank = 0, Epoch = 0, Step = step, TrainSampleCount = Samples, Applied = new AppliedSteps() };
        foreach (long applied in appliedSteps) request.Applied.Steps.Add(new AppliedStep { Step = applied, Ranks = { 0 } });
        return request;
    }

    [Fact]
    public async Task Leases_on_the_stream_are_LeaseShards_answers_and_a_refusal_ends_only_that_stream()
    {
        var (coordinator, client, jobId, channel) = await StartAsync();
        await using var _ = coordinator;
        using var __ = channel;
        using var leases = new LeaseStream(client);

        var first = await leases.LeaseAsync(Request(jobId, 0), Deadline(), CancellationToken.None);
        Assert.Equal(LeaseShardReply.Types.Kind.Shard, first.Kind);
        Assert.Equal(64, first.SampleIndices.Count);
        // The same request asked again, as a unary call, gets the same answer.
        Assert.Equal(first, await client.LeaseShardAsync(Request(jobId, 0)));

        var second = await leases.LeaseAsync(Request(jobId, 1, 0), Deadline(), CancellationToken.None);
        Assert.Equal(LeaseShardReply.Types.Kind.Shard, second.Kind);
        Assert.NotEqual(first.SampleIndices, second.SampleIndices);

        // Refusals carry LeaseShard's status and detail.
        var tooMany = Request(jobId, 2, [.. Enumerable.Range(0, 17).Select(s => (long)s)]);
        var unaryRefusal = await Assert.ThrowsAsync<RpcException>(async () => await client.LeaseShardAsync(tooMany));
        var streamRefusal = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(tooMany, Deadline(), CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, streamRefusal.StatusCode);
        Assert.Equal(unaryRefusal.Status.Detail, streamRefusal.Status.Detail);
        Assert.StartsWith("applied: 17 steps", streamRefusal.Status.Detail, StringComparison.Ordinal);
        var unknownJob = Request("no-such-job", 0);
        var unaryUnknown = await Assert.ThrowsAsync<RpcException>(async () => await client.LeaseShardAsync(unknownJob));
        var streamUnknown = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(unknownJob, Deadline(), CancellationToken.None));
        Assert.Equal((unaryUnknown.StatusCode, unaryUnknown.Status.Detail), (streamUnknown.StatusCode, streamUnknown.Status.Detail));

        // The next request goes on a new stream and is answered as before.
        Assert.Equal(second, await leases.LeaseAsync(Request(jobId, 1, 0), Deadline(), CancellationToken.None));
    }

    [Fact]
    public async Task A_stream_open_when_the_coordinator_stops_ends_at_once_and_the_worker_is_told_to_ask_again()
    {
        var (coordinator, client, jobId, channel) = await StartAsync();
        using var _ = channel;
        using var leases = new LeaseStream(client);
        await leases.LeaseAsync(Request(jobId, 0), Deadline(), CancellationToken.None); // the stream is open and idle

        var stopping = Stopwatch.StartNew();
        await coordinator.DisposeAsync();
        Assert.True(stopping.Elapsed < TimeSpan.FromSeconds(10), $"the coordinator took {stopping.Elapsed.TotalSeconds:0.0} s to stop with a lease stream open");

        // Unavailable is what CoordinatorRetry waits out and asks again for (here nobody comes back).
        var lost = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(Request(jobId, 1, 0), Deadline(), CancellationToken.None));
        Assert.Equal(StatusCode.Unavailable, lost.StatusCode);
    }
}
