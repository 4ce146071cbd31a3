using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>
/// SIGTERM (what `docker stop` and Kubernetes send) stops every role cleanly and promptly: its
/// hosts shut down gracefully and it exits 0, long before an orchestrator's kill timeout.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class GracefulShutdownTests
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Every_role_exits_0_within_seconds_of_sigterm()
    {
        using var coordinator = ClusterCommand.Start("coordinator");
        var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        using var server = ClusterCommand.Start("ps", "--coordinator", urls["grpc"]);
        await server.WaitForLineAsync("CLUSTER-READY", Startup);
        using var worker = ClusterCommand.Start("worker", "--coordinator", urls["grpc"], "--threads", "1");
        using var http = TestSecurity.HttpClient();
        var giveUpAt = DateTime.UtcNow + Startup;
        while ((await http.GetFromJsonAsync<JsonElement>(urls["http"] + "/api/cluster")).GetProperty("workers").GetArrayLength() == 0)
        {
            Assert.True(DateTime.UtcNow < giveUpAt, "the worker did not register");
            await Task.Delay(200);
        }

        foreach (var (role, command) in new[] { ("worker", worker), ("parameter server", server), ("coordinator", coordinator) })
        {
            using (var kill = Process.Start("kill", ["-TERM", command.ProcessId.ToString()])) await kill.WaitForExitAsync();
            var stopwatch = Stopwatch.StartNew();
            int exitCode = await command.WaitAsync(TimeSpan.FromSeconds(20));
            Assert.True(exitCode == 0, $"the {role} exited with {exitCode} on SIGTERM\n{command.Stderr}");
            Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(10), $"the {role} took {stopwatch.Elapsed.TotalSeconds:0.0} s to stop");
        }
    }
}
