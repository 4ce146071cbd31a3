using System.Text.Json;
using System.Text.Json.Serialization;
using Cluster.Shared.Jobs;

namespace Cluster.Coordinator.Api;

/// <summary>
/// The job-spec parser of <c>POST /api/jobs</c>: JSON in, a valid spec or one message per
/// problem out. Plain data binding only (no type names in the input, no polymorphism): unknown
/// fields, nulls where a value is required, wrong types and out-of-range numbers are errors.
/// </summary>
public static class JobSpecJson
{
    private static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        RespectNullableAnnotations = true,
        MaxDepth = 8,
    };

    /// <summary>The spec, or the reasons it is not one (never throws on any input).</summary>
    public static (JobSpecification? Spec, IReadOnlyList<string> Errors) Parse(ReadOnlySpan<byte> json)
    {
        JobSpecification? spec;
        try
        {
            spec = JsonSerializer.Deserialize<JobSpecification>(json, Options);
        }
        catch (JsonException e)
        {
            return (null, [$"body: not a job specification ({e.Message})"]);
        }
        if (spec is null) return (null, ["body: missing; expected a job specification as JSON"]);
        var errors = spec.Validate();
        return errors.Count > 0 ? (null, errors) : (spec, []);
    }
}
