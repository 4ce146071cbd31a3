using System.Diagnostics;
using Cluster.Coordinator;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Training;
using Grpc.Core;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>
/// Leases on one stream (coordinator.proto, LeaseShards) and on the coordinator's lease port
/// (LeasePortFrame), both through the worker's <see cref="LeaseStream"/>, over real sockets: every
/// reply is the one LeaseShard gives for the same request, a refusal comes back with LeaseShard's
/// status, a stream or connection left open when the coordinator stops ends at once (it does not
/// hold the shutdown up) with a status the worker's retry treats as "ask again", and a lease port
/// that cannot be reached or authenticated leaves the leases to the stream, with the reason.
/// </summary>
[Trait("Tier", "integration")]
public sealed class LeaseStreamTests
{
    private const int Samples = 640;

    private static DateTime Deadline() => DateTime.UtcNow.AddSeconds(30);

    /// <summary>A coordinator holding one running "ps" job of one rank, and a client of it.</summary>
    private static async Task<(CoordinatorHost Coordinator, Protos.Coordinator.CoordinatorClient Client, string JobId, IDisposable Channel)> StartAsync()
    {
        var (coordinator, client, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        return (coordinator, client, assignment.JobId, channel);
    }

    private static async Task<(CoordinatorHost Coordinator, Protos.Coordinator.CoordinatorClient Client, Assignment Assignment, IDisposable Channel)> StartAsync(
        CoordinatorOptions options)
    {
        var coordinator = await CoordinatorHost.StartAsync(options, CancellationToken.None);
        coordinator.Board.RegisterServer("http://127.0.0.1:9");
        var channel = ClusterTransport.Channel(coordinator.GrpcUrl, TestSecurity.Loopback, "coordinator");
        var client = new Protos.Coordinator.CoordinatorClient(channel);
        var worker = await client.RegisterWorkerAsync(new RegisterWorkerRequest { Host = "test", Device = "cpu", ProcessId = 1 });
        var job = coordinator.Board.Submit(new JobSpecification { Workers = 1, BatchSize = 64 });
        var assignment = await client.GetAssignmentAsync(new GetAssignmentRequest { WorkerId = worker.WorkerId, WaitMillis = 5000 });
        Assert.Equal(job.Id, assignment.Assignment.JobId);
        return (coordinator, client, assignment.Assignment, channel);
    }

    private static LeasePortClient PortClient(Assignment assignment, ClusterSecurity? security = null) =>
        new("127.0.0.1", assignment.LeasePort, tls: false, security ?? TestSecurity.Loopback);

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

    [Fact]
    public async Task Leases_on_the_lease_port_are_LeaseShards_answers_and_a_refusal_keeps_the_connection()
    {
        var (coordinator, client, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        await using var _ = coordinator;
        using var __ = channel;
        Assert.Equal(coordinator.LeasePortNumber, assignment.LeasePort);
        var reasons = new List<string>();
        void Report(string reason, TimeSpan retryIn) => reasons.Add($"{reason} (again in {retryIn.TotalSeconds:0} s)");
        using var leases = new LeaseStream(client, PortClient(assignment), Report);
        string jobId = assignment.JobId;

        var first = await leases.LeaseAsync(Request(jobId, 0), Deadline(), CancellationToken.None);
        Assert.True(leases.LastOnPort);
        Assert.Equal(LeaseShardReply.Types.Kind.Shard, first.Kind);
        Assert.Equal(64, first.SampleIndices.Count);
        Assert.Equal(first, await client.LeaseShardAsync(Request(jobId, 0)));

        var second = await leases.LeaseAsync(Request(jobId, 1, 0), Deadline(), CancellationToken.None);
        Assert.NotEqual(first.SampleIndices, second.SampleIndices);

        // Refusals carry LeaseShard's status and detail.
        var tooMany = Request(jobId, 2, [.. Enumerable.Range(0, 17).Select(s => (long)s)]);
        var unaryRefusal = await Assert.ThrowsAsync<RpcException>(async () => await client.LeaseShardAsync(tooMany));
        var portRefusal = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(tooMany, Deadline(), CancellationToken.None));
        Assert.Equal((StatusCode.InvalidArgument, unaryRefusal.Status.Detail), (portRefusal.StatusCode, portRefusal.Status.Detail));
        var unknownJob = Request("no-such-job", 0);
        var unaryUnknown = await Assert.ThrowsAsync<RpcException>(async () => await client.LeaseShardAsync(unknownJob));
        var portUnknown = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(unknownJob, Deadline(), CancellationToken.None));
        Assert.Equal((unaryUnknown.StatusCode, unaryUnknown.Status.Detail), (portUnknown.StatusCode, portUnknown.Status.Detail));

        // Still on the port, on the same connection: nothing fell back.
        Assert.Equal(second, await leases.LeaseAsync(Request(jobId, 1, 0), Deadline(), CancellationToken.None));
        Assert.True(leases.LastOnPort);
        Assert.Empty(reasons);
    }

    [Fact]
    public async Task A_lease_port_that_cannot_be_reached_or_does_not_prove_the_secret_leaves_the_leases_to_the_stream()
    {
        var (coordinator, client, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        await using var _ = coordinator;
        using var __ = channel;
        var expected = await client.LeaseShardAsync(Request(assignment.JobId, 0));

        // A port nothing listens on.
        var closed = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        closed.Start();
        int closedPort = ((System.Net.IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        var reasons = new List<string>();
        void Report(string reason, TimeSpan retryIn) => reasons.Add($"{reason} (again in {retryIn.TotalSeconds:0} s)");
        using (var leases = new LeaseStream(client, new LeasePortClient("127.0.0.1", closedPort, tls: false, TestSecurity.Loopback), Report))
        {
            Assert.Equal(expected, await leases.LeaseAsync(Request(assignment.JobId, 0), Deadline(), CancellationToken.None));
            Assert.False(leases.LastOnPort);
            Assert.Contains($"lease port at http://127.0.0.1:{closedPort}", Assert.Single(reasons), StringComparison.Ordinal);
            Assert.EndsWith("(again in 30 s)", reasons[0], StringComparison.Ordinal);
            // The next lease does not try the port again yet.
            Assert.Equal(expected, await leases.LeaseAsync(Request(assignment.JobId, 0), Deadline(), CancellationToken.None));
            Assert.Single(reasons);
        }

        // The real port, with another secret: the coordinator refuses the handshake.
        reasons.Clear();
        var wrong = new ClusterSecurity { Secret = ClusterSecret.Generate() };
        using (var leases = new LeaseStream(client, PortClient(assignment, wrong), Report))
        {
            Assert.Equal(expected, await leases.LeaseAsync(Request(assignment.JobId, 0), Deadline(), CancellationToken.None));
            Assert.False(leases.LastOnPort);
            Assert.Contains("the cluster secret presented is wrong", Assert.Single(reasons), StringComparison.Ordinal);
        }

        // A port that accepts and never answers the handshake: the connect timeout closes the socket under its blocking read.
        reasons.Clear();
        var silent = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        silent.Start();
        try
        {
            using var leases = new LeaseStream(client,
                new LeasePortClient("127.0.0.1", ((System.Net.IPEndPoint)silent.LocalEndpoint).Port, tls: false, TestSecurity.Loopback), Report);
            var waited = Stopwatch.StartNew();
            Assert.Equal(expected, await leases.LeaseAsync(Request(assignment.JobId, 0), Deadline(), CancellationToken.None));
            Assert.False(leases.LastOnPort);
            Assert.Contains($"no connection within {LeasePortClient.ConnectTimeout.TotalSeconds:0} s", Assert.Single(reasons), StringComparison.Ordinal);
            Assert.InRange(waited.Elapsed, LeasePortClient.ConnectTimeout - TimeSpan.FromSeconds(1), LeasePortClient.ConnectTimeout + TimeSpan.FromSeconds(10));
        }
        finally
        {
            silent.Stop();
        }
    }

    [Fact]
    public async Task A_lease_connection_open_when_the_coordinator_stops_ends_at_once_and_the_worker_is_told_to_ask_again()
    {
        var (coordinator, client, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        using var _ = channel;
        using var leases = new LeaseStream(client, PortClient(assignment));
        await leases.LeaseAsync(Request(assignment.JobId, 0), Deadline(), CancellationToken.None);
        Assert.True(leases.LastOnPort);

        var stopping = Stopwatch.StartNew();
        await coordinator.DisposeAsync();
        Assert.True(stopping.Elapsed < TimeSpan.FromSeconds(10), $"the coordinator took {stopping.Elapsed.TotalSeconds:0.0} s to stop with a lease connection open");

        var lost = await Assert.ThrowsAsync<RpcException>(() => leases.LeaseAsync(Request(assignment.JobId, 1, 0), Deadline(), CancellationToken.None));
        Assert.Equal(StatusCode.Unavailable, lost.StatusCode);
    }

    [Fact]
    public async Task A_coordinator_without_a_lease_port_names_none_in_its_assignments()
    {
        var (coordinator, _, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback, LeasePort = -1 });
        await using var __ = coordinator;
        using var ___ = channel;
        Assert.Null(coordinator.LeasePortNumber);
        Assert.Equal(0, assignment.LeasePort);
    }

    [Fact]
    public async Task A_frame_against_the_rules_closes_the_lease_connection()
    {
        var (coordinator, _, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        await using var __ = coordinator;
        using var ___ = channel;
        async Task<Stream> ConnectAsync()
        {
            var socket = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            await socket.ConnectAsync("127.0.0.1", assignment.LeasePort);
            var stream = new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
            await LeasePortProtocol.Handshake.ConnectAsync(stream, TestSecurity.Secret, ReadOnlyMemory<byte>.Empty, CancellationToken.None);
            return stream;
        }

        // A reply where a request belongs.
        await using (var stream = await ConnectAsync())
        {
            await LeasePortProtocol.WriteAsync(stream, new LeasePortFrame { Reply = new LeaseShardReply() }, CancellationToken.None);
            Assert.Null(await new LeasePortProtocol.Reader(stream).ReadAsync(CancellationToken.None));
        }
        // A frame longer than the limit.
        await using (var stream = await ConnectAsync())
        {
            byte[] lengths = new byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(lengths, LeasePortProtocol.FrameBytesMax + 1);
            await stream.WriteAsync(lengths);
            Assert.Null(await new LeasePortProtocol.Reader(stream).ReadAsync(CancellationToken.None));
        }
    }

    [Fact]
    public async Task A_lease_connection_that_never_proves_the_secret_is_closed_after_the_handshake_timeout_and_does_not_hold_up_the_stop()
    {
        // Lease connections are served by blocking calls on threads of their own, which no token interrupts.
        var (coordinator, _, assignment, channel) = await StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback });
        using var __ = channel;
        using var silent = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        await silent.ConnectAsync("127.0.0.1", assignment.LeasePort);
        var waited = Stopwatch.StartNew();
        // The coordinator speaks first (its challenge), then waits for an answer that never comes.
        async Task ReadToEndAsync()
        {
            var buffer = new byte[4096];
            while (await silent.ReceiveAsync(buffer, System.Net.Sockets.SocketFlags.None) > 0) { }
        }
        await ReadToEndAsync().WaitAsync(SecretHandshake.Timeout + TimeSpan.FromSeconds(10));
        Assert.True(waited.Elapsed >= SecretHandshake.Timeout - TimeSpan.FromSeconds(1), $"closed after {waited.Elapsed.TotalSeconds:0.0} s, before the handshake's timeout");

        using var stillSilent = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        await stillSilent.ConnectAsync("127.0.0.1", assignment.LeasePort);
        await Task.Delay(200);
        var stopping = Stopwatch.StartNew();
        await coordinator.DisposeAsync();
        Assert.True(stopping.Elapsed < TimeSpan.FromSeconds(5), $"the coordinator took {stopping.Elapsed.TotalSeconds:0.0} s to stop with a silent lease connection open");
    }
}
