using Microsoft.Extensions.Logging;

namespace Cluster.Worker;

/// <summary>The worker's log messages (source-generated).</summary>
internal static partial class WorkerLog
{
    [LoggerMessage(Level = LogLevel.Information, Message = "Registered with coordinator {Coordinator} as {WorkerId} (device {Device})")]
    public static partial void Registered(ILogger logger, string coordinator, string workerId, string device);

    [LoggerMessage(Level = LogLevel.Information, Message = "Compute threads pinned: {Pinned}")]
    public static partial void ComputePinned(ILogger logger, string pinned);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} of {WorldSize} on {Device}, {ElementCount} parameters")]
    public static partial void JobStarted(ILogger logger, string jobId, int rank, int worldSize, string device, int elementCount);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} finished")]
    public static partial void JobFinished(ILogger logger, string jobId, int rank);

    [LoggerMessage(Level = LogLevel.Error, Message = "Job {JobId}: rank {Rank} failed: {Reason}")]
    public static partial void JobFailed(ILogger logger, string jobId, int rank, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} trained epoch {Epoch} up to step {Step}, loss {Loss:0.0000}")]
    public static partial void EpochTrained(ILogger logger, string jobId, int rank, int epoch, long step, double loss);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} step {Step}: the servers refused this gradient (NaN or Inf); the step went on without it")]
    public static partial void GradientRejected(ILogger logger, string jobId, int rank, long step);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} step {Step}: parameter server lost ({Reason}); waiting for it to come back")]
    public static partial void ServerLost(ILogger logger, string jobId, int rank, long step, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} was at step {Step}; the parameter servers hold version {Version}; resuming there, steps lost: {StepsLost}")]
    public static partial void ServerRecovered(ILogger logger, string jobId, int rank, long step, long version, long stepsLost);

    /// <summary>A scope that puts the job and rank on every log record written inside it (structured logs).</summary>
    public static IDisposable? JobScope(ILogger logger, string jobId, int rank) =>
        logger.BeginScope("job {JobId} rank {Rank}", jobId, rank);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank}: pushes and pulls to parameter server {Server} go through {Transport}")]
    public static partial void ServerTransport(ILogger logger, string jobId, int rank, string server, string transport);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}, rank {Rank}: leases go on {Transport}")]
    public static partial void LeaseTransport(ILogger logger, string jobId, int rank, string transport);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}, rank {Rank}: leases go on the coordinator's gRPC stream for {Seconds} s: {Reason}")]
    public static partial void LeasePortFallback(ILogger logger, string jobId, int rank, string reason, double seconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: aborted by the coordinator")]
    public static partial void JobAborted(ILogger logger, string jobId);
}
