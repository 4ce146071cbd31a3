using System.Diagnostics;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>
/// The Docker engine for the docker tier: the one already running, or one this test starts
/// (`dockerd --iptables=false --bridge=none`: no changes to the host's firewall, and containers
/// only on the networks compose makes) and stops again by its pid.
/// </summary>
public sealed class DockerEngine : IAsyncDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    private readonly Process? _started;

    private DockerEngine(Process? started) => _started = started;

    /// <summary>Why the docker tier cannot run here, or null when it can.</summary>
    public static string? Unavailable()
    {
        if (!OperatingSystem.IsLinux()) return "the docker tier runs on Linux only";
        if (!HostCommand.IsRoot) return "the docker tier starts the Docker engine and needs root; run as root (CI does)";
        foreach (string program in new[] { "dockerd", "docker", "docker-compose", "debootstrap" })
            if (!HostCommand.OnPath(program))
                return $"{program} is not installed (apt-get install -y docker.io docker-compose debootstrap; .ci/run does)";
        return null;
    }

    public static async Task<DockerEngine> StartAsync()
    {
        if ((await HostCommand.RunAsync("docker", ["info", "--format", "{{.ServerVersion}}"], TimeSpan.FromSeconds(20))).ExitCode == 0)
            return new DockerEngine(null);
        string log = Path.Combine(Path.GetTempPath(), $"cluster-dockerd-{Environment.ProcessId}.log");
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        // exec: the pid is dockerd's own, so that stopping it by pid stops the engine.
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add($"exec dockerd --iptables=false --bridge=none >'{log}' 2>&1");
        var process = Process.Start(start)!;
        var engine = new DockerEngine(process);
        var giveUpAt = DateTime.UtcNow + StartTimeout;
        while (DateTime.UtcNow < giveUpAt && !process.HasExited)
        {
            if ((await HostCommand.RunAsync("docker", ["info", "--format", "{{.ServerVersion}}"], TimeSpan.FromSeconds(10))).ExitCode == 0) return engine;
            await Task.Delay(500);
        }
        await engine.DisposeAsync();
        Assert.Fail($"dockerd did not answer within {StartTimeout.TotalSeconds:0} s; its log ({log}):\n{(File.Exists(log) ? File.ReadAllText(log) : "(none)")}");
        return engine;
    }

    /// <summary>Stops the engine this test started (SIGTERM, then SIGKILL); leaves one that was already running.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_started is null) return;
        if (!_started.HasExited)
        {
            using (var term = Process.Start("kill", ["-TERM", _started.Id.ToString()])) await term.WaitForExitAsync();
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try { await _started.WaitForExitAsync(wait.Token); }
            catch (OperationCanceledException) { _started.Kill(entireProcessTree: true); }
        }
        _started.Dispose();
    }
}
