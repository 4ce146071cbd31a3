using Cluster.Coordinator.Jobs;
using Cluster.Shared.Jobs;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Cluster.Coordinator.Api;

/// <summary>
/// The JSON HTTP API used by the CLI (and the dashboard):
/// POST /api/jobs, GET /api/jobs, GET /api/jobs/{id}, POST /api/jobs/{id}/cancel, GET /api/cluster.
/// </summary>
public static class JobsApi
{
    public static void MapJobsApi(this IEndpointRouteBuilder routes)
    {
        var api = routes.MapGroup("/api").WithTags("jobs");
        api.MapPost("/jobs", Submit)
            .Accepts<JobSpecification>("application/json").Produces<JobView>(StatusCodes.Status201Created).Produces<ErrorView>(StatusCodes.Status400BadRequest)
            .WithSummary("Submit a job; it waits in the FIFO queue until enough workers are idle");
        api.MapGet("/jobs", (JobBoard board, TimeProvider time) =>
            board.Read((jobs, _) => jobs.Values.Select(j => JobView.From(j, time.GetUtcNow())).ToList()))
            .WithSummary("Every job with its state, live progress and per-epoch results");
        api.MapGet("/jobs/{id}", (string id, JobBoard board, TimeProvider time) =>
            board.Read((jobs, _) => jobs.TryGetValue(id, out var job)
                ? Results.Ok(JobView.From(job, time.GetUtcNow()))
                : Results.NotFound(new ErrorView([$"id: '{id}' is not a job of this coordinator"]))))
            .Produces<JobView>().Produces<ErrorView>(StatusCodes.Status404NotFound)
            .WithSummary("One job with its state, live progress and per-epoch results");
        api.MapPost("/jobs/{id}/cancel", (string id, JobBoard board) =>
            board.Cancel(id) ? Results.Ok() : Results.Conflict(new ErrorView([$"id: '{id}' is not a queued or running job"])))
            .Produces(StatusCodes.Status200OK).Produces<ErrorView>(StatusCodes.Status409Conflict)
            .WithSummary("Cancel a queued or running job");
        api.MapGet("/cluster", (JobBoard board) => board.Read((_, members) => ClusterView.From(members)))
            .WithSummary("Registered workers and parameter servers");
    }

    private static async Task<IResult> Submit(HttpRequest request, JobBoard board, CoordinatorOptions options, TimeProvider time)
    {
        byte[] body;
        if (request.HttpContext.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
            limit.MaxRequestBodySize = options.ApiBodyBytesMax;
        try
        {
            using var buffer = new MemoryStream();
            await request.Body.CopyToAsync(buffer, request.HttpContext.RequestAborted);
            body = buffer.ToArray();
        }
        catch (BadHttpRequestException e)
        {
            return Results.Json(new ErrorView([$"body: refused ({e.Message}); a job specification is at most {options.ApiBodyBytesMax} bytes"]), statusCode: e.StatusCode);
        }
        var (spec, errors) = JobSpecJson.Parse(body);
        if (spec is null) return Results.BadRequest(new ErrorView(errors));
        try
        {
            var job = board.Submit(spec, options.QueuedJobsMax);
            return Results.Created($"/api/jobs/{job.Id}", JobView.From(job, time.GetUtcNow()));
        }
        catch (JobRejectedException e)
        {
            return Results.BadRequest(new ErrorView(e.Errors));
        }
        catch (QueueFullException e)
        {
            return Results.Json(new ErrorView([e.Message]), statusCode: StatusCodes.Status429TooManyRequests);
        }
    }
}

/// <summary>Body of every 4xx answer: one message per problem.</summary>
public sealed record ErrorView(IReadOnlyList<string> Errors);
