using System.Reflection;
using System.Runtime.CompilerServices;
using Cluster.Coordinator.Api;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Telemetry;
using Cluster.Shared.Telemetry;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Cluster.Coordinator.Dashboard;

/// <summary>
/// The dashboard and the JSON API behind it: GET /api/members, GET /api/jobs/{id}/telemetry,
/// GET /api/jobs/{id}/timeline (Chrome trace), live updates as server-sent events
/// (GET /api/events, GET /api/jobs/{id}/events), GET /metrics, and the page itself at /.
/// Every route is described in the OpenAPI document at /openapi/v1.json.
/// </summary>
public static class DashboardApi
{
    /// <summary>How often the event streams send a fresh snapshot.</summary>
    public static readonly TimeSpan EventInterval = TimeSpan.FromMilliseconds(500);

    public static void MapDashboard(this IEndpointRouteBuilder routes)
    {
        var api = routes.MapGroup("/api").WithTags("dashboard");
        api.MapGet("/members", (JobBoard board, MemberDirectory directory, CoordinatorInfo info, TimeProvider time) => Members(board, directory, info, time))
            .WithSummary("The coordinator, every parameter server and every worker")
            .WithDescription("Workers with host, device, state, job and rank, and last heartbeat; parameter servers with their HTTP side and whether its last /stats poll answered.");
        api.MapGet("/jobs/{id}/telemetry", (string id, JobBoard board, JobTelemetryStore store, MemberDirectory directory) =>
                board.Read((jobs, _) => jobs.TryGetValue(id, out var job)
                    ? Results.Ok(JobTelemetryView.From(job, store.Find(id), directory))
                    : NotFound(id)))
            .Produces<JobTelemetryView>().Produces<ErrorView>(StatusCodes.Status404NotFound)
            .WithSummary("A job's per-rank step phases, its slowest rank, its loss curve and rejected gradients")
            .WithDescription("Phases are mean milliseconds per step: compute, push, wait (at the barrier) and pull. The slowest rank is the one with the most time per step not spent waiting; null with fewer than two ranks reporting.");
        api.MapGet("/jobs/{id}/timeline", async (string id, HttpContext context, TimelineMerger merger) =>
            {
                context.Response.ContentType = "application/json";
                context.Response.Headers.ContentDisposition = $"inline; filename=\"{id}-timeline.json\"";
                if (!await merger.WriteAsync(id, context.Response.Body, context.RequestAborted))
                    await NotFound(id).ExecuteAsync(context);
            })
            .Produces(StatusCodes.Status200OK, contentType: "application/json").Produces<ErrorView>(StatusCodes.Status404NotFound)
            .WithSummary("A job's timeline as Chrome trace JSON (open it in Perfetto or chrome://tracing)")
            .WithDescription("One process per worker and parameter server, one complete event per step phase: compute, push, wait, pull on workers; push, aggregate, wait, pull on servers.");
        api.MapGet("/events", (JobBoard board, MemberDirectory directory, CoordinatorInfo info, TimeProvider time, CancellationToken cancellationToken) =>
                TypedResults.ServerSentEvents(Overviews(board, directory, info, time, cancellationToken), "overview"))
            .WithSummary("Live updates of the cluster and every job (server-sent events)")
            .WithDescription("An 'overview' event with the members and the jobs list every 500 ms.");
        api.MapGet("/jobs/{id}/events", (string id, JobBoard board, JobTelemetryStore store, MemberDirectory directory, TimeProvider time, CancellationToken cancellationToken) =>
                board.Read((jobs, _) => jobs.ContainsKey(id))
                    ? (IResult)TypedResults.ServerSentEvents(JobEvents(id, board, store, directory, time, cancellationToken), "job")
                    : NotFound(id))
            .Produces<ErrorView>(StatusCodes.Status404NotFound)
            .WithSummary("Live updates of one job with its telemetry (server-sent events)")
            .WithDescription("A 'job' event every 500 ms; the stream ends after the event that shows the job finished.");

        routes.MapGet("/metrics", (CoordinatorMetrics metrics) => Results.Text(metrics.Metrics.Scrape(), MetricRegistry.ContentType))
            .WithTags("metrics").WithSummary("Prometheus metrics of the coordinator (text exposition format 0.0.4)");
        routes.MapGet("/", () => Asset("index.html")).ExcludeFromDescription();
        routes.MapGet("/dashboard/{file}", (string file) => Asset(file)).ExcludeFromDescription();
    }

    private static MembersView Members(JobBoard board, MemberDirectory directory, CoordinatorInfo info, TimeProvider time) =>
        board.Read((jobs, registry) => MembersView.From(jobs, registry, directory, info, time.GetUtcNow()));

    private static async IAsyncEnumerable<OverviewEvent> Overviews(
        JobBoard board, MemberDirectory directory, CoordinatorInfo info, TimeProvider time, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            var now = time.GetUtcNow();
            yield return board.Read((jobs, registry) => new OverviewEvent(
                MembersView.From(jobs, registry, directory, info, now),
                [.. jobs.Values.OrderByDescending(j => j.SubmittedAt).Select(j => JobView.From(j, now))]));
            try { await Task.Delay(EventInterval, time, cancellationToken); }
            catch (OperationCanceledException) { yield break; }
        }
    }

    private static async IAsyncEnumerable<JobEvent> JobEvents(
        string id, JobBoard board, JobTelemetryStore store, MemberDirectory directory, TimeProvider time, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            var (view, finished) = board.Read((jobs, _) =>
            {
                var job = jobs[id];
                return (new JobEvent(JobView.From(job, time.GetUtcNow()), JobTelemetryView.From(job, store.Find(id), directory)), job.IsFinished);
            });
            yield return view;
            if (finished) yield break;
            try { await Task.Delay(EventInterval, time, cancellationToken); }
            catch (OperationCanceledException) { yield break; }
        }
    }

    private static IResult NotFound(string id) => Results.NotFound(new ErrorView([$"id: '{id}' is not a job of this coordinator"]));

    /// <summary>The page's files, embedded in this assembly (no CDN, nothing fetched at run time).</summary>
    private static IResult Asset(string file)
    {
        var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream($"dashboard/{file}");
        if (stream is null) return Results.NotFound();
        string type = Path.GetExtension(file) switch
        {
            ".html" => "text/html; charset=utf-8",
            ".js" => "text/javascript; charset=utf-8",
            ".css" => "text/css; charset=utf-8",
            ".svg" => "image/svg+xml",
            _ => "application/octet-stream",
        };
        return Results.Stream(stream, type);
    }
}
