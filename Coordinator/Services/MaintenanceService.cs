using Cluster.Coordinator.Jobs;
using Cluster.Protos;
using Cluster.Shared.Security;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Services;

/// <summary>
/// Background duties: declares silent workers dead (which fails their jobs), and tells the
/// parameter servers to drop the state of jobs that ended.
/// </summary>
public sealed partial class MaintenanceService(JobBoard board, CoordinatorOptions options, ILogger<MaintenanceService> logger) : BackgroundService
{
    private static readonly TimeSpan FinishTimeout = TimeSpan.FromSeconds(5);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(ExpireLoopAsync(stoppingToken), ReleaseLoopAsync(stoppingToken));

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

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId}: parameter server {Address} did not release it: {Detail}")]
    private static partial void LogReleaseFailed(ILogger logger, string jobId, string address, string detail);
}
