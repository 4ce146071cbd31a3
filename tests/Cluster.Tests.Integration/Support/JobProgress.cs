using System.Net.Http.Json;
using System.Text.Json;

namespace Cluster.Tests.Integration.Support;

/// <summary>Watching a running job through the coordinator's JSON API, for tests that inject a fault at a chosen point.</summary>
public static class JobProgress
{
    /// <summary>Waits until a running job's slowest rank has done <paramref name="steps"/> steps of <paramref name="epoch"/>.</summary>
    public static async Task WaitForStepsAsync(string api, int epoch, int steps, TimeSpan timeout)
    {
        using var http = TestSecurity.HttpClient();
        var giveUpAt = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < giveUpAt)
        {
            var jobs = await http.GetFromJsonAsync<JsonElement>($"{api}/api/jobs");
            if (jobs.EnumerateArray().Any(j => j.TryGetProperty("progress", out var p) && p.ValueKind == JsonValueKind.Object
                && (p.GetProperty("epoch").GetInt32() > epoch || (p.GetProperty("epoch").GetInt32() == epoch && p.GetProperty("stepsDone").GetInt32() >= steps))))
                return;
            await Task.Delay(100);
        }
        Assert.Fail($"the job did not reach step {steps} of epoch {epoch} within {timeout.TotalSeconds} s");
    }

    /// <summary>Waits until a running job has lost a rank (removedRanks not empty); returns its slowest rank's steps then.</summary>
    public static async Task<int> WaitForRemovedRankAsync(string api, TimeSpan timeout)
    {
        using var http = TestSecurity.HttpClient();
        var giveUpAt = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < giveUpAt)
        {
            var jobs = await http.GetFromJsonAsync<JsonElement>($"{api}/api/jobs");
            foreach (var job in jobs.EnumerateArray())
                if (job.TryGetProperty("removedRanks", out var removed) && removed.ValueKind == JsonValueKind.Array && removed.GetArrayLength() > 0
                    && job.TryGetProperty("progress", out var p) && p.ValueKind == JsonValueKind.Object)
                    return p.GetProperty("stepsDone").GetInt32();
            await Task.Delay(100);
        }
        Assert.Fail($"no job lost a rank within {timeout.TotalSeconds} s");
        return 0;
    }

    /// <summary>A TCP port free on loopback right now (for a process that must come back on the same port).</summary>
    public static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }
}
