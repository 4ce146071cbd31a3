using System.Text.Json;
using Cluster.ParameterServer.Training;
using Cluster.Shared.Telemetry;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Cluster.ParameterServer.Telemetry;

/// <summary>The parameter server's HTTP side: GET /metrics, GET /timeline?job=ID, GET /stats.</summary>
public static class TelemetryEndpoints
{
    public static void MapTelemetryEndpoints(this IEndpointRouteBuilder routes)
    {
        routes.MapGet("/metrics", (ParameterServerTelemetry telemetry) => Results.Text(telemetry.Metrics.Scrape(), MetricRegistry.ContentType));
        routes.MapGet("/timeline", (string? job, ParameterServerTelemetry telemetry) => Results.Stream(async stream =>
        {
            await using var json = new Utf8JsonWriter(stream);
            ChromeTrace.Write(json, $"parameter server {Environment.MachineName} pid {Environment.ProcessId}", telemetry.Spans.Snapshot(job), perRankTracks: true);
        }, "application/json"));
        routes.MapGet("/stats", (ParameterServerTelemetry telemetry, ParameterStore store) =>
            new ServerStats(Environment.ProcessId, [.. telemetry.Jobs.OrderBy(j => j.JobId, StringComparer.Ordinal).Select(j => View(j, store.Find(j.JobId)))]));
    }

    private static ServerJobStats View(JobCounts counts, JobParameters? held) => new(
        counts.JobId, held is not null, held?.Version ?? Volatile.Read(ref counts.Version),
        Interlocked.Read(ref counts.Pushes), Interlocked.Read(ref counts.RefusedPushes), held?.RejectedGradients ?? Volatile.Read(ref counts.RejectedGradients),
        Interlocked.Read(ref counts.Pulls), Interlocked.Read(ref counts.PushedBytes), Interlocked.Read(ref counts.PulledBytes),
        held?.SyncMode, held?.Staleness ?? 0, held?.MaxLeadSteps ?? 0);
}

/// <summary>What GET /stats answers: this server's view of each job it has served.</summary>
public sealed record ServerStats(int ProcessId, IReadOnlyList<ServerJobStats> Jobs);

/// <summary>One job on one parameter server; <c>Held</c> is false once the job was released.</summary>
public sealed record ServerJobStats(
    string JobId, bool Held, long Version, long Pushes, long RefusedPushes, long RejectedGradients, long Pulls, long PushedBytes, long PulledBytes,
    string? Sync, int Staleness, long MaxLeadSteps);
