using Microsoft.Extensions.Logging;

namespace Cluster.Worker.AllReduce;

/// <summary>The allreduce scheme's log messages (source-generated).</summary>
internal static partial class AllReduceLog
{
    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} in ring generation {Generation} at place {Position} of {Size} (ranks {Ranks})")]
    public static partial void RingFormed(ILogger logger, string jobId, int rank, long generation, int position, int size, string ranks);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} left ring generation {Generation}: {Reason}")]
    public static partial void RingBroken(ILogger logger, string jobId, int rank, long generation, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} caught up to step {Step} with the reduced gradient of rank {Source}")]
    public static partial void CaughtUp(ILogger logger, string jobId, int rank, long step, int source);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} was dropped from the ring; it stops training this job")]
    public static partial void Excluded(ILogger logger, string jobId, int rank);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId}: rank {Rank} final parameters sha256 {Hash}")]
    public static partial void FinalHash(ILogger logger, string jobId, int rank, string hash);
}
