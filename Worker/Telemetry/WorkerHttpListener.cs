using Cluster.Shared.Health;
using Cluster.Shared.Security;
using System.Net;
using System.Text.Json;
using Cluster.Shared.Telemetry;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace Cluster.Worker.Telemetry;

/// <summary>
/// The worker's small HTTP/1.1 side: GET /metrics (Prometheus), GET /timeline?job=ID
/// (Chrome trace JSON of this worker's step spans) and the health probes /healthz and /readyz. Its address goes to the coordinator at
/// registration, so that the coordinator can merge the job's timeline.
/// </summary>
public sealed class WorkerHttpListener : IAsyncDisposable
{
    private readonly WebApplication _app;

    private WorkerHttpListener(WebApplication app, string url) => (_app, Url) = (app, url);

    /// <summary>Base URL the coordinator can reach this listener at.</summary>
    public string Url { get; }

    public static async Task<WorkerHttpListener> StartAsync(
        string bindAddress, int port, ClusterSecurity security, WorkerTelemetry telemetry, Readiness readiness, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        Shared.Health.EmbeddedHostLifetime.Use(builder.Services);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        ListenOptions? listen = null;
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Parse(bindAddress), port, l =>
        {
            (listen = l).Protocols = HttpProtocols.Http1;
            ClusterEndpoints.Secure(l, security, memberEndpoint: false);
        }));
        var app = builder.Build();
        app.RequireClusterSecret(security.Secret);
        app.MapGet("/metrics", () => Results.Text(telemetry.Metrics.Scrape(), MetricRegistry.ContentType));
        app.MapGet("/timeline", (string? job) => Results.Stream(async stream =>
        {
            await using var json = new Utf8JsonWriter(stream);
            ChromeTrace.Write(json, $"worker {Environment.MachineName} pid {Environment.ProcessId}", telemetry.Spans.Snapshot(job), perRankTracks: true);
        }, "application/json"));
        app.MapHealthProbes(readiness);
        await app.StartAsync(cancellationToken);
        var bound = listen!.IPEndPoint!;
        string host = bound.Address.Equals(IPAddress.Any) || bound.Address.Equals(IPAddress.IPv6Any) ? Dns.GetHostName()
            : bound.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{bound.Address}]" : bound.Address.ToString();
        return new WorkerHttpListener(app, $"{ClusterEndpoints.Scheme(security)}://{host}:{bound.Port}");
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
