using System.Diagnostics;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>
/// Several "hosts" on one machine: each a network namespace with its own address on a private
/// switch (a bridge in a namespace of its own, one veth link per host) and tc netem delay on
/// both ends of every link. Only these namespaces and their loopback carry traffic; the host's
/// own network is untouched. Disposing kills what was started in them and deletes them all.
/// </summary>
public sealed class NetworkNamespaces : IAsyncDisposable
{
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(20);
    private readonly string _prefix = $"cl{Environment.ProcessId}";
    private readonly List<string> _namespaces = [];
    private readonly List<Process> _processes = [];

    private NetworkNamespaces() { }

    /// <summary>Why the multihost tier cannot run here, or null when it can.</summary>
    public static string? Unavailable()
    {
        if (!OperatingSystem.IsLinux()) return "network namespaces are a Linux feature";
        if (!HostCommand.IsRoot) return "creating network namespaces needs root; run as root (CI does)";
        foreach (string program in new[] { "ip", "tc" })
            if (!HostCommand.OnPath(program)) return $"{program} is not installed (apt-get install -y iproute2)";
        return null;
    }

    private static readonly Lazy<string?> NetemMissing = new(ProbeNetem);

    /// <summary>Why links cannot be delayed here (a kernel without sch_netem), or null when they can.</summary>
    public static string? NetemUnavailable() => Unavailable() ?? NetemMissing.Value;

    private static string? ProbeNetem()
    {
        string probe = $"cl{Environment.ProcessId}probe";
        static (int ExitCode, string Error) Run(params string[] arguments)
        {
            var start = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (string argument in arguments) start.ArgumentList.Add(argument);
            using var process = Process.Start(start)!;
            string error = process.StandardError.ReadToEnd();
            process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, error.Trim());
        }
        if (Run("netns", "add", probe) is { ExitCode: not 0 } failed) return $"ip netns add failed: {failed.Error}";
        try
        {
            var (exitCode, error) = Run("netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms");
            return exitCode == 0 ? null : $"this kernel cannot delay links with tc netem (`tc qdisc add ... netem`: {error}; it needs the sch_netem module)";
        }
        finally
        {
            Run("netns", "del", probe);
        }
    }

    /// <summary>The address of host <paramref name="index"/> on the switch.</summary>
    public static string Address(int index) => $"10.200.0.{index + 1}";

    public string Namespace(int index) => $"{_prefix}h{index}";

    /// <summary>Creates <paramref name="hosts"/> namespaces linked to one switch, with <paramref name="delayMillis"/> of delay on each end of every link (0: none).</summary>
    public static async Task<NetworkNamespaces> CreateAsync(int hosts, int delayMillis)
    {
        var network = new NetworkNamespaces();
        try
        {
            string switchNs = network._prefix + "sw";
            await network.AddNamespaceAsync(switchNs);
            await Ip("-n", switchNs, "link", "add", "br0", "type", "bridge");
            await Ip("-n", switchNs, "link", "set", "br0", "up");
            for (int i = 0; i < hosts; i++)
            {
                string ns = network.Namespace(i), hostEnd = $"{network._prefix}h{i}", switchEnd = $"{network._prefix}s{i}";
                await network.AddNamespaceAsync(ns);
                await Ip("link", "add", hostEnd, "type", "veth", "peer", "name", switchEnd);
                await Ip("link", "set", hostEnd, "netns", ns);
                await Ip("link", "set", switchEnd, "netns", switchNs);
                await Ip("-n", ns, "link", "set", hostEnd, "name", "eth0");
                await Ip("-n", ns, "addr", "add", Address(i) + "/24", "dev", "eth0");
                await Ip("-n", ns, "link", "set", "eth0", "up");
                await Ip("-n", ns, "link", "set", "lo", "up");
                await Ip("-n", switchNs, "link", "set", switchEnd, "master", "br0", "up");
                if (delayMillis <= 0) continue;
                await Ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", $"{delayMillis}ms");
                await Ip("netns", "exec", switchNs, "tc", "qdisc", "add", "dev", switchEnd, "root", "netem", "delay", $"{delayMillis}ms");
            }
            return network;
        }
        catch
        {
            await network.DisposeAsync();
            throw;
        }
    }

    /// <summary>The queueing disciplines on a host's link, e.g. to check the delay is in place.</summary>
    public async Task<string> QdiscAsync(int index) =>
        await HostCommand.CheckAsync("ip", ["netns", "exec", Namespace(index), "tc", "qdisc", "show", "dev", "eth0"], CommandTimeout);

    /// <summary>Starts `dotnet ARGS` inside host <paramref name="index"/>'s namespace; output goes to <paramref name="log"/>.</summary>
    public Process Start(int index, string log, IReadOnlyDictionary<string, string> environment, params string[] arguments)
    {
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        // ip netns exec execs the program, so the pid is the program's own.
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add($"exec ip netns exec {Namespace(index)} dotnet \"$@\" >'{log}' 2>&1");
        start.ArgumentList.Add("sh");
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        foreach (var (name, value) in environment) start.Environment[name] = value;
        var process = Process.Start(start)!;
        lock (_processes) _processes.Add(process);
        return process;
    }

    private async Task AddNamespaceAsync(string name)
    {
        await Ip("netns", "add", name);
        _namespaces.Add(name);
    }

    private static Task<string> Ip(params string[] arguments) => HostCommand.CheckAsync("ip", arguments, CommandTimeout);

    public async ValueTask DisposeAsync()
    {
        lock (_processes)
            foreach (var process in _processes)
            {
                try { if (!process.HasExited) process.Kill(entireProcessTree: true); }
                catch (InvalidOperationException) { }
            }
        foreach (var process in _processes)
        {
            await process.WaitForExitAsync();
            process.Dispose();
        }
        foreach (string name in Enumerable.Reverse(_namespaces))
            await HostCommand.RunAsync("ip", ["netns", "del", name], CommandTimeout);
    }
}
