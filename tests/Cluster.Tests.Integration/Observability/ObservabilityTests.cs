using System.Diagnostics;
using System.Text.Json;

namespace Cluster.Tests.Integration.Observability;

/// <summary>
/// What an operator sees of a finished 2-worker job in which one worker was slowed on purpose:
/// the slowest rank in the API, the timeline, Prometheus metrics of every role, the OpenAPI document.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class ObservabilityTests(ObservedCluster cluster) : IClassFixture<ObservedCluster>
{
    [Fact]
    public async Task The_API_flags_the_slowed_worker_as_the_slowest()
    {
        var members = await cluster.GetJsonAsync($"{cluster.Api}/api/members");
        string slowWorkerId = members.GetProperty("workers").EnumerateArray()
            .Single(w => w.GetProperty("processId").GetInt32() == cluster.SlowWorkerProcessId).GetProperty("id").GetString()!;

        var telemetry = await cluster.GetJsonAsync($"{cluster.Api}/api/jobs/{cluster.JobId}/telemetry");

        Assert.Equal(slowWorkerId, telemetry.GetProperty("slowestWorker").GetString());
        var ranks = telemetry.GetProperty("ranks").EnumerateArray().ToList();
        Assert.Equal(2, ranks.Count);
        var slow = ranks.Single(r => r.GetProperty("slowest").GetBoolean());
        var fast = ranks.Single(r => !r.GetProperty("slowest").GetBoolean());
        Assert.Equal(slowWorkerId, slow.GetProperty("workerId").GetString());
        Assert.Equal(telemetry.GetProperty("slowestRank").GetInt32(), slow.GetProperty("rank").GetInt32());
        // The injected delay is compute time of the slow rank, and the fast rank waits for it at the barrier.
        Assert.True(slow.GetProperty("computeMillis").GetDouble() >= ObservedCluster.SlowStepMillis, slow.ToString());
        Assert.True(fast.GetProperty("waitMillis").GetDouble() > slow.GetProperty("waitMillis").GetDouble(), $"{fast}\n{slow}");
        // 3200 samples, 2 x 64 per step: 25 steps, all timed.
        Assert.All(ranks, r => Assert.Equal(25, r.GetProperty("steps").GetInt64()));
        Assert.NotEmpty(telemetry.GetProperty("loss").EnumerateArray());
        Assert.Equal(0, telemetry.GetProperty("rejectedGradients").GetInt64());
    }

    [Fact]
    public async Task The_timeline_of_a_two_worker_job_is_chrome_trace_json_with_every_phase_for_every_worker()
    {
        using var response = await cluster.Http.GetAsync($"{cluster.Api}/api/jobs/{cluster.JobId}/timeline");
        response.EnsureSuccessStatusCode();
        using var trace = JsonDocument.Parse(await response.Content.ReadAsStringAsync());

        var events = trace.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        Assert.Empty(trace.RootElement.GetProperty("otherData").GetProperty("missing").EnumerateArray());
        foreach (var e in events)
        {
            // The Trace Event Format fields Perfetto needs: every event has a name, phase, pid and tid; complete events a start and a duration.
            Assert.Equal(JsonValueKind.String, e.GetProperty("name").ValueKind);
            Assert.Contains(e.GetProperty("ph").GetString(), new[] { "X", "M" });
            Assert.Equal(JsonValueKind.Number, e.GetProperty("pid").ValueKind);
            Assert.Equal(JsonValueKind.Number, e.GetProperty("tid").ValueKind);
            if (e.GetProperty("ph").GetString() != "X") continue;
            Assert.True(e.GetProperty("ts").GetInt64() > 1_600_000_000_000_000, "ts is in microseconds since the Unix epoch");
            Assert.True(e.GetProperty("dur").GetInt64() >= 0);
        }
        var processes = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "process_name")
            .ToDictionary(e => e.GetProperty("pid").GetInt32(), e => e.GetProperty("args").GetProperty("name").GetString()!);
        var spans = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        for (int rank = 0; rank < 2; rank++)
        {
            int pid = processes.Single(p => p.Value.EndsWith($"(rank {rank})", StringComparison.Ordinal)).Key;
            foreach (string phase in new[] { "compute", "push", "wait", "pull" })
            {
                var steps = spans.Where(s => s.GetProperty("pid").GetInt32() == pid && s.GetProperty("name").GetString() == phase)
                    .Select(s => s.GetProperty("args").GetProperty("step").GetInt64()).ToHashSet();
                Assert.True(steps.SetEquals(Enumerable.Range(0, 25).Select(i => (long)i)), $"rank {rank} {phase}: steps {string.Join(",", steps.Order())}");
            }
        }
        int serverPid = processes.Single(p => p.Value.StartsWith("parameter server", StringComparison.Ordinal)).Key;
        var serverPhases = spans.Where(s => s.GetProperty("pid").GetInt32() == serverPid).Select(s => s.GetProperty("name").GetString()).ToHashSet();
        Assert.Superset(new HashSet<string?> { "push", "aggregate", "wait", "pull" }, serverPhases);
    }

    [Fact]
    public async Task Metrics_of_every_role_pass_promtool()
    {
        var members = await cluster.GetJsonAsync($"{cluster.Api}/api/members");
        var endpoints = new List<(string Role, string Url)> { ("coordinator", $"{cluster.Api}/metrics") };
        endpoints.AddRange(members.GetProperty("parameterServers").EnumerateArray().Select(s => ("parameter server", $"{s.GetProperty("httpUrl").GetString()}/metrics")));
        endpoints.AddRange(members.GetProperty("workers").EnumerateArray().Select(w => ("worker", $"{w.GetProperty("httpUrl").GetString()}/metrics")));
        Assert.Equal(4, endpoints.Count);

        foreach (var (role, url) in endpoints)
        {
            using var response = await cluster.Http.GetAsync(url);
            response.EnsureSuccessStatusCode();
            Assert.StartsWith("text/plain", response.Content.Headers.ContentType!.ToString(), StringComparison.Ordinal);
            string text = await response.Content.ReadAsStringAsync();
            var (exitCode, output) = await PromtoolAsync(text);
            Assert.True(exitCode == 0, $"{role} {url}: promtool check metrics failed:\n{output}\n{text}");
            switch (role)
            {
                case "coordinator":
                    Assert.Contains("cluster_coordinator_heartbeats_total ", text, StringComparison.Ordinal);
                    Assert.Contains("cluster_jobs{state=\"succeeded\"} 1", text, StringComparison.Ordinal);
                    break;
                case "parameter server":
                    Assert.Matches("cluster_ps_phase_seconds_count\\{phase=\"aggregate\"\\} [1-9]", text);
                    Assert.Contains("cluster_ps_pushes_total{outcome=\"accepted\"} 50", text, StringComparison.Ordinal);
                    break;
                default:
                    Assert.Contains("cluster_worker_steps_total 25", text, StringComparison.Ordinal);
                    foreach (string phase in new[] { "compute", "push", "wait", "pull" })
                        Assert.Contains($"cluster_worker_step_phase_seconds_count{{phase=\"{phase}\"}} 25", text, StringComparison.Ordinal);
                    break;
            }
        }
    }

    [Fact]
    public async Task The_OpenAPI_document_describes_the_json_api_and_the_page_is_served()
    {
        var document = await cluster.GetJsonAsync($"{cluster.Api}/openapi/v1.json");
        var paths = document.GetProperty("paths");
        foreach (string path in new[] { "/api/jobs", "/api/jobs/{id}", "/api/jobs/{id}/cancel", "/api/cluster", "/api/members",
                     "/api/jobs/{id}/telemetry", "/api/jobs/{id}/timeline", "/api/events", "/api/jobs/{id}/events", "/metrics" })
            Assert.True(paths.TryGetProperty(path, out _), $"OpenAPI document lacks {path}");
        Assert.Equal("Cluster coordinator API", document.GetProperty("info").GetProperty("title").GetString());
        Assert.True(paths.GetProperty("/api/jobs").GetProperty("post").TryGetProperty("requestBody", out _), "submit has no request body schema");

        string page = await cluster.Http.GetStringAsync($"{cluster.Api}/");
        Assert.Contains("/dashboard/app.js", page, StringComparison.Ordinal);
        string script = await cluster.Http.GetStringAsync($"{cluster.Api}/dashboard/app.js");
        Assert.Contains("/api/events", script, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_job_event_stream_sends_the_finished_job_with_its_telemetry_and_ends()
    {
        using var response = await cluster.Http.GetAsync($"{cluster.Api}/api/jobs/{cluster.JobId}/events");
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        string body = await response.Content.ReadAsStringAsync();

        string data = body.Split('\n').Single(l => l.StartsWith("data:", StringComparison.Ordinal))["data:".Length..];
        Assert.Contains("event: job", body, StringComparison.Ordinal);
        using var job = JsonDocument.Parse(data);
        Assert.Equal("succeeded", job.RootElement.GetProperty("job").GetProperty("state").GetString());
        Assert.Equal(2, job.RootElement.GetProperty("telemetry").GetProperty("ranks").GetArrayLength());
    }

    [Fact]
    public void A_worker_asked_for_TensorBoard_writes_event_files_with_the_job_s_scalars()
    {
        var files = Directory.GetFiles(cluster.TensorBoardDirectory, "events.out.tfevents.*", SearchOption.AllDirectories);

        // Only the fast worker was started with --tensorboard; which rank it got is up to the scheduler.
        string file = Assert.Single(files);
        Assert.Equal(cluster.JobId, Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(file))));
        string content = System.Text.Encoding.Latin1.GetString(File.ReadAllBytes(file));
        foreach (string tag in new[] { "train/loss", "step/compute_ms", "step/wait_ms", "test/loss", "test/accuracy" })
            Assert.Contains(tag, content, StringComparison.Ordinal);
    }

    /// <summary>Runs Debian's `promtool check metrics` (package prometheus) on <paramref name="text"/>.</summary>
    private static async Task<(int ExitCode, string Output)> PromtoolAsync(string text)
    {
        const string promtool = "/usr/bin/promtool";
        Assert.True(File.Exists(promtool), "promtool is missing: apt-get install -y prometheus (.ci/run installs it)");
        var start = new ProcessStartInfo(promtool, "check metrics")
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var process = Process.Start(start)!;
        await process.StandardInput.WriteAsync(text);
        process.StandardInput.Close();
        string output = await process.StandardOutput.ReadToEndAsync() + await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, output);
    }
}
