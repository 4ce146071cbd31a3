using Cluster.Coordinator.Jobs;
using Cluster.Protos;
using Grpc.Core;
using Microsoft.Extensions.Hosting;

namespace Cluster.Coordinator.Services;

/// <summary>gRPC adapter over <see cref="JobBoard"/> (see coordinator.proto for the sequence).</summary>
public sealed class CoordinatorService(JobBoard board, CoordinatorOptions options, IHostApplicationLifetime? lifetime = null, LeasePort? leasePort = null)
    : Protos.Coordinator.CoordinatorBase
{
    private static readonly TimeSpan AssignmentWaitMax = TimeSpan.FromSeconds(30);
    private const int NameLengthMax = 256;
    private const int AddressLengthMax = 2048;
    private const int FailureMessageLengthMax = 4096;

    public override Task<RegisterParameterServerReply> RegisterParameterServer(RegisterParameterServerRequest request, ServerCallContext context)
    {
        if (request.Address.Length > AddressLengthMax)
            throw Invalid($"address: {request.Address.Length} characters; expected at most {AddressLengthMax}");
        if (!Uri.TryCreate(request.Address, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw Invalid($"address: '{request.Address}' is not an address; expected http://HOST:PORT or https://HOST:PORT");
        return Task.FromResult(new RegisterParameterServerReply { ServerId = board.RegisterServer(request.Address).Id });
    }

    public override Task<RegisterWorkerReply> RegisterWorker(RegisterWorkerRequest request, ServerCallContext context)
    {
        if (request.Host.Length is 0 or > NameLengthMax)
            throw Invalid($"host: {request.Host.Length} characters; expected 1 to {NameLengthMax}");
        if (request.Device.Length > NameLengthMax || !Shared.Jobs.DeviceNames.IsValid(request.Device))
            throw Invalid($"device: not a device; expected auto, cpu, cuda or cuda:N");
        Membership.WorkerMember worker;
        try { worker = board.RegisterWorker(request.Host, request.Device, request.ProcessId, options.WorkersMax); }
        catch (QueueFullException e) { throw new RpcException(new Status(StatusCode.ResourceExhausted, e.Message)); }
        return Task.FromResult(new RegisterWorkerReply
        {
            WorkerId = worker.Id,
            HeartbeatIntervalMillis = (int)options.HeartbeatInterval.TotalMilliseconds,
        });
    }

    public override Task<HeartbeatReply> Heartbeat(HeartbeatRequest request, ServerCallContext context)
    {
        var (known, abortJobId) = board.Heartbeat(request.WorkerId);
        return Task.FromResult(new HeartbeatReply { Known = known, AbortJobId = abortJobId ?? "" });
    }

    public override async Task<GetAssignmentReply> GetAssignment(GetAssignmentRequest request, ServerCallContext context)
    {
        var wait = TimeSpan.FromMilliseconds(Math.Clamp(request.WaitMillis, 0, (int)AssignmentWaitMax.TotalMilliseconds));
        Assignment? assignment;
        try { assignment = await board.WaitForAssignmentAsync(request.WorkerId, wait, context.CancellationToken); }
        catch (ArgumentException e) { throw Invalid(e.Message); }
        if (assignment is not null && leasePort is not null) assignment = new Assignment(assignment) { LeasePort = leasePort.Port };
        return new GetAssignmentReply { Assignment = assignment };
    }

    public override Task<GetShardReply> GetShard(GetShardRequest request, ServerCallContext context)
    {
        var (indices, offsets) = Guard(() => board.Shard(request.JobId, request.Rank, request.Epoch, request.TrainSampleCount));
        var reply = new GetShardReply();
        reply.SampleIndices.AddRange(indices);
        reply.StepOffsets.AddRange(offsets);
        return Task.FromResult(reply);
    }

    public override Task<ReportProgressReply> ReportProgress(ReportProgressRequest request, ServerCallContext context)
    {
        Guard(() => board.Progress(request));
        return Task.FromResult(new ReportProgressReply());
    }

    public override Task<ReportEvaluationReply> ReportEvaluation(ReportEvaluationRequest request, ServerCallContext context)
    {
        Guard(() => board.Evaluation(request));
        return Task.FromResult(new ReportEvaluationReply());
    }

    public override Task<ReportFailureReply> ReportFailure(ReportFailureRequest request, ServerCallContext context)
    {
        string message = request.Message.Length <= FailureMessageLengthMax ? request.Message : request.Message[..FailureMessageLengthMax] + " (cut)";
        board.Fail(request.JobId, message, request.Rank);
        return Task.FromResult(new ReportFailureReply());
    }

    public override async Task<JoinRingReply> JoinRing(JoinRingRequest request, ServerCallContext context)
    {
        if (request.PeerAddress.Length > AddressLengthMax || request.DataAddress.Length > AddressLengthMax)
            throw Invalid($"peer_address, data_address: {request.PeerAddress.Length} and {request.DataAddress.Length} characters; expected at most {AddressLengthMax} each");
        var wait = context.Deadline == DateTime.MaxValue ? AssignmentWaitMax : Min(AssignmentWaitMax, context.Deadline - DateTime.UtcNow - TimeSpan.FromSeconds(1));
        try { return await board.JoinRingAsync(request, wait, context.CancellationToken); }
        catch (ArgumentException e) { throw Invalid(e.Message); }
        catch (InvalidOperationException e) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
    }

    public override Task<LeaseShardReply> LeaseShard(LeaseShardRequest request, ServerCallContext context) => Task.FromResult(Lease(request));

    /// <summary>
    /// LeaseShard's answers on one stream, until the worker closes it or this coordinator stops
    /// (then the stream ends at once instead of holding the shutdown up; the worker asks again,
    /// on a new stream, of the coordinator that comes back).
    /// </summary>
    public override async Task LeaseShards(IAsyncStreamReader<LeaseShardRequest> requestStream, IServerStreamWriter<LeaseShardReply> responseStream,
        ServerCallContext context)
    {
        // A graceful stop waits for open requests: this one would be waited for until the shutdown timeout.
        using var stopping = (lifetime?.ApplicationStopping ?? CancellationToken.None).Register(() => context.GetHttpContext().Abort());
        try
        {
            await foreach (var request in requestStream.ReadAllAsync(context.CancellationToken))
                await responseStream.WriteAsync(Lease(request), CancellationToken.None); // the call's own cancellation applies
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or InvalidOperationException && context.CancellationToken.IsCancellationRequested)
        {
            // The worker closed the stream, or this coordinator is stopping: nothing to answer.
        }
    }

    private LeaseShardReply Lease(LeaseShardRequest request) => Lease(board, request);

    /// <summary>LeaseShard's answer, on every path a worker leases by (the unary call, the stream, the lease port); refusals are RpcExceptions.</summary>
    public static LeaseShardReply Lease(JobBoard board, LeaseShardRequest request)
    {
        if (request.Applied is { } applied && applied.Steps.Count > Leases.ShardLeaseTable.AppliedStepsKept)
            throw Invalid($"applied: {applied.Steps.Count} steps; expected at most {Leases.ShardLeaseTable.AppliedStepsKept}");
        return Guard(() => board.Lease(request));
    }

    public override Task<LeaveJobReply> LeaveJob(LeaveJobRequest request, ServerCallContext context) =>
        Task.FromResult(new LeaveJobReply { Left = Guard(() => board.Leave(request.JobId, request.Rank)) });

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    /// <summary>Maps the board's errors to gRPC statuses: bad arguments, and calls for jobs that are over.</summary>
    private static T Guard<T>(Func<T> action)
    {
        try { return action(); }
        catch (ArgumentException e) { throw Invalid(e.Message); }
        catch (InvalidOperationException e) { throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)); }
    }

    private static void Guard(Action action) => Guard(() => { action(); return 0; });

    private static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));
}
