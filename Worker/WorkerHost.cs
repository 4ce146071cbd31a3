using Cluster.Protos;
using Cluster.Shared.Health;
using Cluster.Shared.Rpc;
using Cluster.Shared.Security;
using Cluster.Worker.Telemetry;
using Cluster.Worker.AllReduce;
using Cluster.Worker.Training;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Cluster.Worker;

/// <summary>
/// A worker process's life: register with the coordinator, heartbeat, wait for a job, train it,
/// report, and wait for the next. Exits with an error when the coordinator cannot be reached.
/// </summary>
public sealed class WorkerHost(WorkerOptions options, ILoggerFactory loggerFactory)
{
    private readonly ILogger _logger = loggerFactory.CreateLogger("Cluster.Worker");
    private readonly object _gate = new();
    private string? _currentJobId;
    private CancellationTokenSource? _currentJob;

    /// <summary>This process's metrics and step spans, served by its HTTP listener.</summary>
    public WorkerTelemetry Telemetry { get; } = new();

    /// <summary>Ready once registered with the coordinator; not ready while shutting down or after losing it.</summary>
    public Readiness Readiness { get; } = new();

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        // Where jobs run: every tensor of the process is touched by this one thread (see ComputeThread).
        using var compute = new ComputeThread(options.Threads, pinToCores: true);
        if (await compute.Pinned is { } pinned) WorkerLog.ComputePinned(_logger, pinned);
        using var channel = ClusterTransport.Channel(options.CoordinatorUrl, options.Security!, "coordinator");
        var coordinator = new Coordinator.CoordinatorClient(channel);
        _data = new DataService.DataServiceClient(channel);
        await using var listener = await WorkerHttpListener.StartAsync(options.HttpBindAddress, options.HttpPort, options.Security!, Telemetry, Readiness, cancellationToken);
        RegisterWorkerReply registration;
        try
        {
            registration = await RegisterAsync(coordinator, listener.Url, cancellationToken);
        }
        catch (Exception e) when (IsStopRequest(e, cancellationToken))
        {
            // Asked to stop while registering (the coordinator may have registered us already; it will expire us).
            return;
        }
        WorkerLog.Registered(_logger, options.CoordinatorUrl, registration.WorkerId, options.Device ?? "job's choice");
        Readiness.MarkReady();

        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var heartbeats = HeartbeatLoopAsync(coordinator, registration, stopping);
        try
        {
            do
            {
                var reply = await CoordinatorRetry.CallAsync(options, deadline => coordinator.GetAssignmentAsync(
                    new GetAssignmentRequest { WorkerId = registration.WorkerId, WaitMillis = 5000 },
                    deadline: deadline, cancellationToken: stopping.Token), stopping.Token);
                if (reply.Assignment is null) continue;
                await RunJobAsync(coordinator, reply.Assignment, compute, stopping.Token);
            }
            while (!options.SingleJob);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            // The heartbeat loop lost the coordinator; it recorded why.
        }
        catch (Exception e) when (IsStopRequest(e, cancellationToken))
        {
            // Asked to stop (SIGTERM, Ctrl-C): a clean exit; a job in progress was abandoned at its current step.
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
        {
            throw new PeerUnreachableException($"coordinator at {options.CoordinatorUrl} did not answer ({e.StatusCode}: {e.Status.Detail})", e);
        }
        finally
        {
            Readiness.MarkNotReady();
            await stopping.CancelAsync();
            await heartbeats;
            if (_peers is not null) await _peers.DisposeAsync();
        }
        if (_coordinatorLost is not null) throw _coordinatorLost;
    }

    /// <summary>Whether <paramref name="e"/> is how a call ends when the worker is asked to stop (SIGTERM, Ctrl-C).</summary>
    private static bool IsStopRequest(Exception e, CancellationToken cancellationToken) =>
        cancellationToken.IsCancellationRequested && e is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled };

    private PeerUnreachableException? _coordinatorLost;
    private DataService.DataServiceClient? _data;
    /// <summary>The RingPeer service, started with the first allreduce job and kept for the process's life.</summary>
    private PeerHost? _peers;

    private async Task RunJobAsync(Coordinator.CoordinatorClient coordinator, Assignment assignment, ComputeThread compute, CancellationToken cancellationToken)
    {
        using var job = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        lock (_gate) (_currentJobId, _currentJob) = (assignment.JobId, job);
        using var scope = WorkerLog.JobScope(_logger, assignment.JobId, assignment.Rank);
        Telemetry.Training.Set(1);
        string outcome = "failed";
        try
        {
            if (await Data.DatasetFetcher.PrepareAsync(assignment.Spec, assignment.JobId, options.DataSource, _data!,
                    options.CacheDirectory ?? Data.DatasetFetcher.DefaultCacheDirectory(), _logger, options.CallTimeout, job.Token) is { } local)
                assignment.Spec.DataDir = local;
            if (assignment.Spec.Scheme == "allreduce")
            {
                _peers ??= await PeerHost.StartAsync(options.PeerBindAddress, options.PeerPort, options.PeerAdvertiseHost, options.Security!, cancellationToken);
                var peers = _peers;
                await compute.RunAsync(() => new AllReduceTrainer(assignment, coordinator, peers, options, _logger).RunAsync(job.Token));
            }
            else
            {
                await compute.RunAsync(() => new ParameterServerTrainer(assignment, coordinator, options, _logger, Telemetry).RunAsync(job.Token));
            }
            WorkerLog.JobFinished(_logger, assignment.JobId, assignment.Rank);
            outcome = "succeeded";
        }
        catch (OperationCanceledException) when (job.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            WorkerLog.JobAborted(_logger, assignment.JobId);
            outcome = "aborted";
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && assignment.Spec.Scheme != "allreduce")
        {
            // The process is stopping: leave the job so that the others need not wait for the heartbeat timeout.
            outcome = "left";
            await LeaveAsync(coordinator, assignment);
            throw;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            string reason = e is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : e.Message;
            WorkerLog.JobFailed(_logger, assignment.JobId, assignment.Rank, reason);
            await coordinator.ReportFailureAsync(
                new ReportFailureRequest { JobId = assignment.JobId, Rank = assignment.Rank, Message = $"rank {assignment.Rank}: {reason}" },
                deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
        }
        finally
        {
            lock (_gate) (_currentJobId, _currentJob) = (null, null);
            Telemetry.Training.Set(0);
            Telemetry.JobsFinished.WithLabels(outcome).Increment();
        }
    }

    private static async Task LeaveAsync(Coordinator.CoordinatorClient coordinator, Assignment assignment)
    {
        try
        {
            await coordinator.LeaveJobAsync(new LeaveJobRequest { JobId = assignment.JobId, Rank = assignment.Rank },
                deadline: DateTime.UtcNow + TimeSpan.FromSeconds(2), cancellationToken: CancellationToken.None);
        }
        catch (RpcException)
        {
            // The heartbeat timeout removes it instead.
        }
    }

    private Task<RegisterWorkerReply> RegisterAsync(Coordinator.CoordinatorClient coordinator, string httpUrl, CancellationToken cancellationToken)
    {
        var request = new RegisterWorkerRequest
        {
            Host = Environment.MachineName, Device = options.Device ?? "auto", ProcessId = Environment.ProcessId,
            HttpUrl = httpUrl, DeviceDetail = DeviceDescription.Describe(options.Device ?? "auto"),
        };
        return Reconnect.UntilAsync("coordinator", options.CoordinatorUrl, options.ConnectTimeout,
            deadline => coordinator.RegisterWorkerAsync(request, deadline: deadline, cancellationToken: cancellationToken).ResponseAsync,
            cancellationToken);
    }

    private async Task HeartbeatLoopAsync(Coordinator.CoordinatorClient coordinator, RegisterWorkerReply registration, CancellationTokenSource stopping)
    {
        var interval = TimeSpan.FromMilliseconds(Math.Max(100, registration.HeartbeatIntervalMillis));
        var lastAnswer = DateTime.UtcNow;
        while (!stopping.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(interval, stopping.Token);
                var reply = await coordinator.HeartbeatAsync(
                    new HeartbeatRequest { WorkerId = registration.WorkerId },
                    deadline: DateTime.UtcNow + interval * 3, cancellationToken: stopping.Token);
                lastAnswer = DateTime.UtcNow;
                Telemetry.Heartbeats.Increment();
                if (reply.AbortJobId.Length > 0)
                    lock (_gate)
                        if (reply.AbortJobId == _currentJobId) _currentJob?.Cancel();
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (RpcException) when (DateTime.UtcNow - lastAnswer < options.CoordinatorLostTimeout)
            {
                // Missed heartbeats are tolerated until CoordinatorLostTimeout.
            }
            catch (RpcException e)
            {
                _coordinatorLost = new PeerUnreachableException(
                    $"coordinator at {options.CoordinatorUrl} lost: no heartbeat answer for {options.CoordinatorLostTimeout.TotalSeconds:0.#} s ({e.Status.Detail})", e);
                await stopping.CancelAsync();
                return;
            }
        }
    }
}
