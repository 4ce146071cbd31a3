using System.Text.Json;
using Cluster.Coordinator.Jobs;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// A job's timeline: fetches GET /timeline?job=ID from every worker of the job and every
/// parameter server, and merges their Chrome trace events into one trace with a process per
/// member (named "worker-1 (rank 0)", "parameter server http://…"). Timestamps are each
/// machine's wall clock in microseconds, so spans of different machines line up as far as
/// their clocks agree. Members that do not answer are listed in otherData.missing.
/// </summary>
public sealed class TimelineMerger(JobBoard board, MemberDirectory members)
{
    private static readonly TimeSpan FetchTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Writes the merged trace; returns false when the job is unknown.</summary>
    public async Task<bool> WriteAsync(string jobId, Stream output, CancellationToken cancellationToken)
    {
        var sources = board.Read((jobs, _) => jobs.TryGetValue(jobId, out var job)
            ? job.Ranks.Select((worker, rank) => (Name: $"{worker} (rank {rank})", Url: members.Worker(worker)?.HttpUrl))
                .Concat(job.ParameterServers.Select(address => (Name: $"parameter server {address}", Url: members.Server(address)?.HttpUrl)))
                .ToList()
            : null);
        if (sources is null) return false;

        using var http = MemberHttp.Create(FetchTimeout);
        var traces = await Task.WhenAll(sources.Select(source => FetchAsync(http, source.Url, jobId, cancellationToken)));
        await using var json = new Utf8JsonWriter(output);
        json.WriteStartObject();
        json.WriteString("displayTimeUnit", "ms");
        json.WriteStartArray("traceEvents");
        var missing = new List<string>();
        for (int i = 0; i < sources.Count; i++)
        {
            if (traces[i] is not { } trace) { missing.Add(sources[i].Name); continue; }
            using (trace) WriteEvents(json, trace.RootElement, pid: i + 1, sources[i].Name);
        }
        json.WriteEndArray();
        json.WriteStartObject("otherData");
        json.WriteString("job", jobId);
        json.WriteStartArray("missing");
        foreach (string name in missing) json.WriteStringValue(name);
        json.WriteEndArray();
        json.WriteEndObject();
        json.WriteEndObject();
        return true;
    }

    private static async Task<JsonDocument?> FetchAsync(HttpClient http, string? url, string jobId, CancellationToken cancellationToken)
    {
        if (url is null) return null;
        try
        {
            await using var stream = await http.GetStreamAsync($"{url}/timeline?job={Uri.EscapeDataString(jobId)}", cancellationToken);
            return await JsonDocument.ParseAsync(stream, cancellationToken: cancellationToken);
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>Copies a member's events with its pid replaced by <paramref name="pid"/> and its process named <paramref name="name"/>.</summary>
    private static void WriteEvents(Utf8JsonWriter json, JsonElement trace, int pid, string name)
    {
        if (!trace.TryGetProperty("traceEvents", out var events) || events.ValueKind != JsonValueKind.Array) return;
        foreach (var e in events.EnumerateArray())
        {
            bool processName = e.TryGetProperty("name", out var n) && n.ValueEquals("process_name") && e.TryGetProperty("ph", out var ph) && ph.ValueEquals("M");
            json.WriteStartObject();
            foreach (var property in e.EnumerateObject())
            {
                if (property.NameEquals("pid")) json.WriteNumber("pid", pid);
                else if (processName && property.NameEquals("args"))
                {
                    json.WriteStartObject("args");
                    json.WriteString("name", name);
                    json.WriteEndObject();
                }
                else property.WriteTo(json);
            }
            json.WriteEndObject();
        }
    }
}
