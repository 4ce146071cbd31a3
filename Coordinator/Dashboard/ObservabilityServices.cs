using Cluster.Coordinator.Telemetry;
using Microsoft.Extensions.DependencyInjection;

namespace Cluster.Coordinator.Dashboard;

/// <summary>Registers the coordinator's observability: metrics, member directory, job telemetry, timeline, OpenAPI.</summary>
public static class ObservabilityServices
{
    public static IServiceCollection AddObservability(this IServiceCollection services)
    {
        services.AddSingleton<CoordinatorInfo>();
        services.AddSingleton<CoordinatorMetrics>();
        services.AddSingleton<MemberDirectory>();
        services.AddSingleton<JobTelemetryStore>();
        services.AddSingleton<TimelineMerger>();
        services.AddHostedService<ServerStatsPoller>();
        services.AddOpenApi(openApi => openApi.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "Cluster coordinator API";
            document.Info.Description =
                "The JSON API of the coordinator, used by the `cluster` CLI and the web dashboard: submit, list and cancel jobs, " +
                "see the cluster's members, follow a job live (server-sent events), and get its step telemetry and timeline. " +
                "Prometheus metrics are at /metrics.";
            return Task.CompletedTask;
        }));
        return services;
    }
}
