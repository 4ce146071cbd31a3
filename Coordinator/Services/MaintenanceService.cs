using Cluster.Coordinator.Jobs;
using Cluster.Protos;
using Cluster.Shared.Security;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Services;

/// <summary>
/// Background duties: declares silent workers dead, tells the parameter servers of a "ps" job
/// to stop waiting for the ranks it lost, and to drop the state of jobs that ended.
/// </summary>
public sealed partial class MaintenanceService(JobBoard board, CoordinatorOptions options, ILogger<MaintenanceService> logger) : BackgroundService
{
    private static readonly TimeSpan FinishTimeout = TimeSpan.FromSeconds(5);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(ExpireLoopAsync(stoppingToken), ReleaseLoopAsync(stoppingToken), RemoveRanksLoopAsync(stoppingToken));

    /// <summary>Attempts to tell one server that a rank is gone, spaced by the heartbeat interval, before giving up on it.</summary>
    private const int RemoveAttemptsMax = 10;

    private async Task RemoveRanksLoopAsync(CancellationToken stoppingToken)
    {
        try
        {
            await foreach (var (job, rank) in board.RemovedRanks.ReadAllAsync(stoppingToken))
            {
                LogRankRemoved(logger, job.Id, rank);
                await Task.WhenAll(job.ParameterServers.Select(address => RemoveRankAsync(job, rank, address, stoppingToken)));
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task RemoveRankAsync(JobRecord job, int rank, string address, CancellationToken stoppingToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                using var channel = ClusterTransport.Channel(address, options.Security!, "parameter server");
                await new ParameterServer.ParameterServerClient(channel).RemoveRankAsync(
                    new RemoveRankRequest { JobId = job.Id, Rank = rank }, deadline: DateTime.UtcNow + FinishTimeout, cancellationToken: stoppingToken);
                return;
            }
            catch (Grpc.Core.RpcException e) when (attempt < RemoveAttemptsMax && !job.IsFinished && e.StatusCode != Grpc.Core.StatusCode.NotFound)
            {
                await Task.Delay(options.HeartbeatInterval, stoppingToken);
            }
            catch (Grpc.Core.RpcException e)
            {
                LogRemoveFailed(logger, job.Id, rank, address, e.Status.Detail);
                return;
            }
        }
    }

    private async Task ExpireLoopAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.HeartbeatInterval);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false) is true)
            board.ExpireWorkers(options.HeartbeatTimeout);
    }

    private async Task ReleaseLoopAsync(CancellationToken stoppingToken)
    {
        try
        {
            await foreach (var job in board.FinishedJobs.ReadAllAsync(stoppingToken))
            {
                LogJobEnded(logger, job.Id, job.State.ToString(), job.Error ?? "");
                foreach (string address in job.ParameterServers)
                {
                    try
                    {
                        using var channel = ClusterTransport.Channel(address, options.Security!, "parameter server");
                        await new ParameterServer.ParameterServerClient(channel).FinishAsync(
                            new FinishRequest { JobId = job.Id }, deadline: DateTime.UtcNow + FinishTimeout, cancellationToken: stoppingToken);
                    }
                    catch (Grpc.Core.RpcException e)
                    {
                        LogReleaseFailed(logger, job.Id, address, e.Status.Detail);
                    }
                    catch (ArgumentException e)
                    {
                        LogReleaseFailed(logger, job.Id, address, e.Message);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {JobId} ended: {State} {Error}")]
    private static partial void LogJobEnded(ILogger logger, string jobId, string state, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: rank {Rank} removed; its unapplied shards return to the pool")]
    private static partial void LogRankRemoved(ILogger logger, string jobId, int rank);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: parameter server {Address} did not remove rank {Rank}: {Detail}")]
    private static partial void LogRemoveFailed(ILogger logger, string jobId, int rank, string address, string detail);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: parameter server {Address} did not release it: {Detail}")]
    private static partial void LogReleaseFailed(ILogger logger, string jobId, string address, string detail);
}
