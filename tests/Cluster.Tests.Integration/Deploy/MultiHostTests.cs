using System.Diagnostics;
using System.Text.Json;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Checkpoints;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>A test of the multihost tier: skipped, saying why, where network namespaces cannot be made.</summary>
public sealed class MultiHostFactAttribute : FactAttribute
{
    public MultiHostFactAttribute()
    {
        if (NetworkNamespaces.Unavailable() is { } reason) Skip = reason;
    }
}

/// <summary>A multihost test whose links are delayed: also skipped where the kernel has no tc netem.</summary>
public sealed class DelayedMultiHostFactAttribute : FactAttribute
{
    public DelayedMultiHostFactAttribute()
    {
        if (NetworkNamespaces.NetemUnavailable() is { } reason) Skip = reason;
    }
}

/// <summary>
/// The cluster spread over five "machines": coordinator, two parameter servers and two workers
/// each in its own network namespace with its own address, 2 ms of netem delay on both ends of
/// every link where the kernel has netem. A job submitted there ends with the parameters of the same job (same seed) on a
/// local cluster on loopback.
/// </summary>
[Trait("Tier", "multihost")]
public sealed class MultiHostTests
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(5);
    private static readonly string[] Job =
        ["--model", "mlp", "--workers", "2", "--ps", "2", "--epochs", "1", "--batch-size", "32", "--seed", "7",
         "--train-limit", "6400", "--test-limit", "500", "--device", "cpu"];

    [DelayedMultiHostFact]
    public Task A_job_across_five_namespaces_with_2_ms_links_ends_with_the_parameters_of_the_same_job_on_loopback() =>
        SpreadJobMatchesLoopbackAsync(delayMillis: 2);

    /// <summary>The same without the delay, for kernels without netem: still five addresses, five network stacks, one switch.</summary>
    [MultiHostFact]
    public Task A_job_across_five_namespaces_ends_with_the_parameters_of_the_same_job_on_loopback() =>
        SpreadJobMatchesLoopbackAsync(delayMillis: 0);

    private static async Task SpreadJobMatchesLoopbackAsync(int delayMillis)
    {
        string scratch = Directory.CreateTempSubdirectory("cluster-multihost-").FullName;
        try
        {
            string spread = Path.Combine(scratch, "spread.safetensors"), loopback = Path.Combine(scratch, "loopback.safetensors");
            var elapsed = Stopwatch.StartNew();
            await TrainAcrossNamespacesAsync(scratch, spread, delayMillis);
            var spreadSeconds = elapsed.Elapsed.TotalSeconds;

            var (exitCode, _, stderr) = await ClusterCommand.RunAsync(JobTimeout, ["local", .. Job, "--output", "json", "--save-to", loopback]);
            Assert.True(exitCode == 0, $"the loopback run exited with {exitCode}\n{stderr}");

            var expected = SafeTensorsFile.Read(loopback);
            var actual = SafeTensorsFile.Read(spread);
            Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
            double largest = 0;
            string worst = "";
            foreach (var (name, entry) in expected.Where(e => e.Value.DType == "F32"))
            {
                float[] want = Floats(entry.Data), got = Floats(actual[name].Data);
                Assert.Equal(want.Length, got.Length);
                for (int i = 0; i < want.Length; i++)
                    if (Math.Abs(want[i] - got[i]) > largest) (largest, worst) = (Math.Abs(want[i] - got[i]), $"{name}[{i}]");
            }
            Assert.True(largest <= 1e-4, $"largest parameter difference {largest:E3} at {worst}; expected <= 1e-4 (spread run took {spreadSeconds:0} s)");
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    private static async Task TrainAcrossNamespacesAsync(string scratch, string saveTo, int delayMillis)
    {
        string cluster = Path.Combine(AppContext.BaseDirectory, "cluster.dll");
        var environment = new Dictionary<string, string> { ["CLUSTER_SECRET"] = TestSecurity.Secret.Value };
        string Log(string role) => Path.Combine(scratch, role + ".log");
        string coordinator = NetworkNamespaces.Address(0);
        // Plain HTTP between the namespaces: --allow-plaintext is the explicit consent (SECURITY.md).
        await using var hosts = await NetworkNamespaces.CreateAsync(hosts: 5, delayMillis);
        for (int i = 0; i < 5 && delayMillis > 0; i++)
            Assert.Contains($"netem delay {delayMillis}ms", await hosts.QdiscAsync(i), StringComparison.Ordinal);

        hosts.Start(0, Log("coordinator"), environment, cluster, "coordinator", "--bind", "0.0.0.0", "--port", "5000", "--http-port", "5080", "--allow-plaintext");
        await WaitForReadyAsync(Log("coordinator"));
        for (int shard = 0; shard < 2; shard++)
        {
            string address = NetworkNamespaces.Address(1 + shard);
            hosts.Start(1 + shard, Log($"ps-{shard}"), environment, cluster, "ps", "--coordinator", $"http://{coordinator}:5000",
                "--bind", address, "--port", "5001", "--http-port", "5081", "--advertise", $"http://{address}:5001", "--allow-plaintext");
            await WaitForReadyAsync(Log($"ps-{shard}"));
        }
        for (int rank = 0; rank < 2; rank++)
            hosts.Start(3 + rank, Log($"worker-{rank}"), environment, cluster, "worker", "--coordinator", $"http://{coordinator}:5000",
                "--http-bind", NetworkNamespaces.Address(3 + rank), "--threads", "1", "--allow-plaintext");

        // The client runs on the coordinator's machine and talks to its API over loopback.
        var submit = await HostCommand.RunAsync("ip",
            ["netns", "exec", hosts.Namespace(0), "dotnet", cluster, "submit", "--api", "http://127.0.0.1:5080", .. Job, "--wait", "--output", "json", "--save-to", saveTo],
            JobTimeout, environment);
        string logs = string.Join("\n", Directory.EnumerateFiles(scratch, "*.log").Select(f => $"--- {Path.GetFileName(f)}\n{File.ReadAllText(f)}"));
        Assert.True(submit.ExitCode == 0, submit.Describe("cluster submit") + "\n" + logs);
        using var job = JsonDocument.Parse(submit.Stdout);
        Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
        Assert.True(File.Exists(saveTo), $"the job wrote no checkpoint to {saveTo}\n{logs}");
    }

    private static async Task WaitForReadyAsync(string log)
    {
        var giveUpAt = DateTime.UtcNow + Startup;
        while (DateTime.UtcNow < giveUpAt)
        {
            if (File.Exists(log) && (await File.ReadAllTextAsync(log)).Contains("CLUSTER-READY", StringComparison.Ordinal)) return;
            await Task.Delay(200);
        }
        Assert.Fail($"no CLUSTER-READY within {Startup.TotalSeconds:0} s in {log}:\n{(File.Exists(log) ? await File.ReadAllTextAsync(log) : "(no log)")}");
    }

    private static float[] Floats(byte[] data)
    {
        var values = new float[data.Length / sizeof(float)];
        Buffer.BlockCopy(data, 0, values, 0, data.Length);
        return values;
    }
}
