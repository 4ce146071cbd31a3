using System.Text.Json;
using System.Text.Json.Serialization;
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

    private static readonly JsonSerializerOptions SpecJson = new(JsonSerializerDefaults.Web)
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    private static async Task<IResult> Submit(HttpRequest request, JobBoard board, TimeProvider time)
    {
        JobSpecification? spec;
        try
        {
            spec = await JsonSerializer.DeserializeAsync<JobSpecification>(request.Body, SpecJson, request.HttpContext.RequestAborted);
        }
        catch (JsonException e)
        {
            return Results.BadRequest(new ErrorView([$"body: not a job specification ({e.Message})"]));
        }
        if (spec is null) return Results.BadRequest(new ErrorView(["body: missing; expected a job specification as JSON"]));
        try
        {
            var job = board.Submit(spec);
            return Results.Created($"/api/jobs/{job.Id}", JobView.From(job, time.GetUtcNow()));
        }
        catch (JobRejectedException e)
        {
            return Results.BadRequest(new ErrorView(e.Errors));
        }
    }
}

/// <summary>Body of every 4xx answer: one message per problem.</summary>
public sealed record ErrorView(IReadOnlyList<string> Errors);
