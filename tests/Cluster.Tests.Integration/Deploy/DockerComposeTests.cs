using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>A test of the docker tier: skipped, saying why, where the Docker engine cannot be started.</summary>
public sealed class DockerFactAttribute : FactAttribute
{
    public DockerFactAttribute()
    {
        if (DockerEngine.Unavailable() is { } reason) Skip = reason;
    }
}

/// <summary>
/// deploy/docker-compose.yml for real: the images are built from the repository's Dockerfiles
/// (on base images made locally, since no registry is reachable here), `docker-compose up`
/// starts a coordinator, two parameter-server shards, two workers and Prometheus, a
/// Fashion-MNIST job submitted with `cluster submit` reaches 88 % test accuracy, Prometheus
/// scrapes every role with the secret, and `docker-compose down` leaves nothing behind.
/// </summary>
[Trait("Tier", "docker")]
public sealed class DockerComposeTests
{
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(15);
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromMinutes(2);

    [DockerFact]
    public async Task Compose_up_trains_a_submitted_fashion_mnist_job_to_88_percent_and_down_leaves_nothing_running()
    {
        string root = HostCommand.RepositoryRoot();
        string deploy = Path.Combine(root, "deploy");
        string project = $"clustertest{Environment.ProcessId}";
        string scratch = Directory.CreateTempSubdirectory("cluster-compose-").FullName;
        string envFile = Path.Combine(scratch, "cluster.env");
        await File.WriteAllTextAsync(envFile, $"CLUSTER_SECRET={TestSecurity.Secret.Value}\n");
        int apiPort = JobProgress.FreePort(), prometheusPort = JobProgress.FreePort();
        var environment = new Dictionary<string, string>
        {
            ["SDK_IMAGE"] = "cluster-local/sdk:10.0",
            ["RUNTIME_IMAGE"] = "cluster-local/aspnet:10.0",
            ["PROMETHEUS_IMAGE"] = "cluster-local/prometheus:latest",
            ["CLUSTER_IMAGE_PREFIX"] = "cluster-test",
            ["CLUSTER_ENV_FILE"] = envFile,
            ["CLUSTER_BUILD_NETWORK"] = "host", // the engine has no bridge; the restore needs NuGet
            ["CLUSTER_API_PORT"] = apiPort.ToString(),
            ["PROMETHEUS_PORT"] = prometheusPort.ToString(),
            ["CLUSTER_DATA"] = Path.Combine(root, "data"),
        };
        string[] compose = ["-p", project, "-f", Path.Combine(deploy, "docker-compose.yml")];

        await using var engine = await DockerEngine.StartAsync();
        // A failure of the job is kept and thrown after the clean-up's checks, which then name it too.
        Exception? failure = null;
        try
        {
            await HostCommand.CheckAsync(Path.Combine(deploy, "docker", "build-local-base-images"), [], BuildTimeout);
            await BuildPrometheusImageAsync(scratch);
            await HostCommand.CheckAsync("docker-compose", [.. compose, "build"], BuildTimeout, environment, deploy);
            await HostCommand.CheckAsync("docker-compose", [.. compose, "up", "-d"], ReadyTimeout, environment, deploy);
            string api = $"http://127.0.0.1:{apiPort}";
            await WaitForAsync(async () => (await HostCommand.RunAsync("docker", ["ps", "--filter", $"label=com.docker.compose.project={project}", "--filter", "health=healthy", "-q"], TimeSpan.FromSeconds(20)))
                .Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length == 5, ReadyTimeout, "the five cluster containers to report healthy");

            var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(JobTimeout,
                "submit", "--api", api, "--wait", "--output", "json",
                "--model", "cnn", "--workers", "2", "--ps", "2", "--epochs", "2", "--batch-size", "64");
            Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}\n{await LogsAsync(compose, environment, deploy)}");
            using (var job = JsonDocument.Parse(stdout))
            {
                Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
                double accuracy = job.RootElement.GetProperty("epochs").EnumerateArray().Last().GetProperty("accuracy").GetDouble();
                Assert.True(accuracy >= 0.88, $"test accuracy {accuracy:P2}; expected at least 88 %");
            }

            // Prometheus scrapes every role through the secret.
            using var http = TestSecurity.HttpClient();
            await WaitForAsync(async () =>
            {
                using var targets = JsonDocument.Parse(await http.GetStringAsync($"http://127.0.0.1:{prometheusPort}/api/v1/targets"));
                var health = targets.RootElement.GetProperty("data").GetProperty("activeTargets").EnumerateArray()
                    .Select(t => t.GetProperty("health").GetString()).ToList();
                return health.Count == 5 && health.All(h => h == "up");
            }, ReadyTimeout, "Prometheus to scrape all five roles");
        }
        catch (Exception e)
        {
            failure = e;
        }
        var down = await HostCommand.RunAsync("docker-compose", [.. compose, "down", "--volumes", "--timeout", "20"], TimeSpan.FromMinutes(3), environment, deploy);
        var left = await HostCommand.RunAsync("docker", ["ps", "-a", "--filter", $"label=com.docker.compose.project={project}", "-q"], TimeSpan.FromSeconds(30));
        var networks = await HostCommand.RunAsync("docker", ["network", "ls", "--filter", $"label=com.docker.compose.project={project}", "-q"], TimeSpan.FromSeconds(30));
        var volumes = await HostCommand.RunAsync("docker", ["volume", "ls", "--filter", $"label=com.docker.compose.project={project}", "-q"], TimeSpan.FromSeconds(30));
        Directory.Delete(scratch, recursive: true);
        string after = failure is null ? "" : $"after the test failed with: {failure}\n";
        Assert.True(down.ExitCode == 0, after + down.Describe("docker-compose down"));
        Assert.True(left.Stdout.Trim().Length == 0, $"{after}containers left after down: {left.Stdout}");
        Assert.True(networks.Stdout.Trim().Length == 0, $"{after}networks left after down: {networks.Stdout}");
        Assert.True(volumes.Stdout.Trim().Length == 0, $"{after}volumes left after down: {volumes.Stdout}");
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
    }

    /// <summary>Prometheus from Debian's package on the local Debian base (the official image cannot be pulled here).</summary>
    private static async Task BuildPrometheusImageAsync(string scratch)
    {
        const string Binary = "/usr/bin/prometheus";
        Assert.True(File.Exists(Binary), $"{Binary} is missing; expected Debian's prometheus package (.ci/run installs it)");
        string context = Directory.CreateDirectory(Path.Combine(scratch, "prometheus-image")).FullName;
        File.Copy(Binary, Path.Combine(context, "prometheus"));
        await File.WriteAllTextAsync(Path.Combine(context, "Dockerfile"),
            "FROM cluster-local/bookworm-minbase:latest\nCOPY prometheus /usr/bin/prometheus\n" +
            "RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus\nUSER 65534\n");
        await HostCommand.CheckAsync("docker", ["build", "-q", "-t", "cluster-local/prometheus:latest", context], BuildTimeout);
    }

    private static async Task<string> LogsAsync(string[] compose, Dictionary<string, string> environment, string deploy) =>
        (await HostCommand.RunAsync("docker-compose", [.. compose, "logs", "--no-color", "--tail", "40"], TimeSpan.FromSeconds(60), environment, deploy)).Stdout;

    private static async Task WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var giveUpAt = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < giveUpAt)
        {
            try { if (await condition()) return; }
            catch (HttpRequestException) { }
            await Task.Delay(1000);
        }
        Assert.Fail($"timed out after {timeout.TotalSeconds:0} s waiting for {what}");
    }
}
