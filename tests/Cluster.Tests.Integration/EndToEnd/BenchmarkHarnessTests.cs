using System.Diagnostics;
using System.Text.Json;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>The benchmark harness runs end to end in its quick mode and writes every suite's figures; the figures themselves are not judged here.</summary>
[Trait("Tier", "e2e")]
public sealed class BenchmarkHarnessTests
{
    [Fact]
    public async Task Quick_mode_measures_every_suite_and_writes_json()
    {
        string json = Path.Combine(Path.GetTempPath(), $"bench-{Guid.NewGuid():N}.json");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { Path.Combine(AppContext.BaseDirectory, "Cluster.Bench.dll"), "--quick", "--json", json })
            start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException) { process.Kill(entireProcessTree: true); throw; }

        Assert.True(process.ExitCode == 0, await stderr);
        Assert.Contains("| loopback | raw TCP socket", await stdout, StringComparison.Ordinal);
        using var document = JsonDocument.Parse(await File.ReadAllTextAsync(json));
        var results = document.RootElement.GetProperty("results").EnumerateArray().ToList();
        var suites = results.Select(r => r.GetProperty("suite").GetString()).ToHashSet();
        // The sync over a shaped link runs where a network namespace can be made (Linux, root, iproute2), and says why not elsewhere.
        bool linked = suites.Remove("ps-link");
        Assert.Equal(new HashSet<string?> { "loopback", "ps-sync", "flatten", "local-vs-cluster", "scaling" }, suites);
        if (!linked) Assert.Contains("ps-link: skipped: ", await stderr, StringComparison.Ordinal);
        Assert.All(results, r => Assert.True(r.GetProperty("value").GetDouble() > 0, r.ToString()));
        var names = results.Select(r => r.GetProperty("name").GetString()!).ToList();
        foreach (string model in new[] { "cnn", "mlp" })
            foreach (string phase in new[] { "local step (batch 64)", "1-worker cluster step, median: compute", "1-worker cluster step, median: push" })
                Assert.Contains(names, name => name.StartsWith($"{model}: {phase}", StringComparison.Ordinal));
        Assert.Contains(names, name => name.StartsWith("memory copy of 10 MB on one core", StringComparison.Ordinal));
        // The syncs through shared memory, each against the same sync over the socket.
        Assert.Contains(names, name => name.EndsWith("K=1, float32 through shared memory: time per step", StringComparison.Ordinal));
        Assert.Contains(names, name => name == "2.1 MB model (the mlp's size), 1 worker(s), K=1, float32 through shared memory: time per step");
        if (linked)
            foreach (string dtype in new[] { "float32", "bfloat16" })
                Assert.Contains(names, name => name == $"10 MB model, 1 worker(s), K=1, {dtype} over the 10 Gb/s link (veth, tc tbf): time per step");
        File.Delete(json);
    }

    [Fact]
    public void Step_phases_are_rank_0s_medians_from_the_first_step_on_and_ignore_the_servers_spans()
    {
        // Rank 0's worker (pid 1) and a parameter server (pid 2, whose push spans carry rank 0 too).
        var events = new List<object>
        {
            new { name = "process_name", ph = "M", pid = 1, tid = 0, args = new { name = "worker-1 (rank 0)" } },
            new { name = "process_name", ph = "M", pid = 2, tid = 0, args = new { name = "parameter server http://127.0.0.1:1" } },
        };
        void Span(int pid, string name, long step, long start, long duration) =>
            events.Add(new { name, cat = "step", ph = "X", ts = start, dur = duration, pid, tid = 0, args = new { job = "job-1", rank = 0, step } });
        // Steps 0-1 are slow (a first epoch); steps 2-5 take 10 ms each: compute 6, push 1, wait 0.5, pull 0.5, 2 between.
        for (long step = 0; step < 6; step++)
        {
            long start = step * 10_000 + (step < 2 ? 0 : 50_000);
            long slow = step < 2 ? 5 : 1;
            Span(1, "compute", step, start, 6_000 * slow);
            if (step == 5) break; // the last step has no next one: not counted
            Span(1, "push", step, start + 6_000, 1_000);
            Span(1, "wait", step, start + 7_000, 500);
            Span(1, "pull", step, start + 7_500, 500);
            Span(2, "push", step, start + 6_100, 9_000);
        }
        string path = Path.Combine(Path.GetTempPath(), $"timeline-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(new { traceEvents = events }));
        try
        {
            var phases = Bench.Suites.StepPhases.FromTimeline(path, firstStep: 2);
            Assert.Equal(6.0, phases.ComputeMs, 6);
            Assert.Equal(1.0, phases.PushMs, 6);
            Assert.Equal(0.5, phases.WaitMs, 6);
            Assert.Equal(0.5, phases.PullMs, 6);
            Assert.Equal(2.0, phases.BetweenMs, 6);
            Assert.Equal(10.0, phases.PeriodMs, 6);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_timeline_without_rank_0s_worker_is_refused_naming_the_file()
    {
        string path = Path.Combine(Path.GetTempPath(), $"timeline-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(new
        {
            traceEvents = new object[] { new { name = "process_name", ph = "M", pid = 2, tid = 0, args = new { name = "parameter server http://127.0.0.1:1" } } },
        }));
        try
        {
            var error = Assert.Throws<InvalidDataException>(() => Bench.Suites.StepPhases.FromTimeline(path, firstStep: 0));
            Assert.Contains(path, error.Message, StringComparison.Ordinal);
            Assert.Contains("0 processes", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
