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
        Assert.Equal(new HashSet<string?> { "loopback", "ps-sync", "flatten", "local-vs-cluster", "scaling" }, suites);
        Assert.All(results, r => Assert.True(r.GetProperty("value").GetDouble() > 0, r.ToString()));
        File.Delete(json);
    }
}
