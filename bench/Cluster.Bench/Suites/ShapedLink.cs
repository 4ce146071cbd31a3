using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Cluster.ParameterServer;
using Cluster.Shared.Security;

namespace Cluster.Bench.Suites;

/// <summary>
/// A network link of a set rate between this process and a network namespace of its own, for
/// measuring a sync where the wire, not this machine's memory, is the limit (two hosts on a
/// 10 Gb/s link, say): a veth pair whose two ends are each shaped by tc's token bucket (tbf),
/// so that each direction carries at most the rate. Parameter servers run inside the namespace
/// as child processes of this one (<see cref="StartServerAsync"/>). Needs Linux, root, and ip
/// and tc (iproute2); nothing outside the namespace and its link is changed, and disposing
/// deletes both.
/// </summary>
public sealed class ShapedLink : IAsyncDisposable
{
    /// <summary>The argument that makes this program a parameter server inside the namespace (see <see cref="ServeAsync"/>).</summary>
    public const string ServeArgument = "--serve-ps-on-link";

    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(20);
    private readonly string _namespace = $"cbench{Environment.ProcessId}";
    private readonly string _hostEnd = $"cb{Environment.ProcessId}h", _namespaceEnd = $"cb{Environment.ProcessId}n";
    private readonly string _subnet = $"10.201.{Environment.ProcessId % 250}";

    private ShapedLink(double gigabitsPerSecond) => GigabitsPerSecond = gigabitsPerSecond;

    public double GigabitsPerSecond { get; }

    /// <summary>The link's rate in bytes per second, in each direction.</summary>
    public double BytesPerSecond => GigabitsPerSecond * 1e9 / 8;

    /// <summary>The address of the namespace's end, where its servers listen.</summary>
    public string RemoteAddress => $"{_subnet}.2";

    /// <summary>Why a link cannot be made here, or null when it can.</summary>
    public static string? Unavailable()
    {
        if (!OperatingSystem.IsLinux()) return "network namespaces are a Linux feature";
        if (!Environment.IsPrivilegedProcess) return "making a network namespace and shaping its link needs root";
        foreach (string program in new[] { "ip", "tc" })
            if (!OnPath(program)) return $"{program} is not installed (apt-get install -y iproute2)";
        return null;
    }

    /// <summary>Makes the namespace and its link, <paramref name="gigabitsPerSecond"/> each way.</summary>
    public static async Task<ShapedLink> CreateAsync(double gigabitsPerSecond)
    {
        var link = new ShapedLink(gigabitsPerSecond);
        try
        {
            string rate = $"{gigabitsPerSecond}gbit";
            await RunAsync("ip", "netns", "add", link._namespace);
            await RunAsync("ip", "link", "add", link._hostEnd, "type", "veth", "peer", "name", link._namespaceEnd);
            await RunAsync("ip", "link", "set", link._namespaceEnd, "netns", link._namespace);
            await RunAsync("ip", "addr", "add", $"{link._subnet}.1/30", "dev", link._hostEnd);
            await RunAsync("ip", "link", "set", link._hostEnd, "up");
            await RunAsync("ip", "-n", link._namespace, "addr", "add", $"{link.RemoteAddress}/30", "dev", link._namespaceEnd);
            await RunAsync("ip", "-n", link._namespace, "link", "set", link._namespaceEnd, "up");
            await RunAsync("ip", "-n", link._namespace, "link", "set", "lo", "up");
            // A burst of 4 MB lets the segments of a large send through whole; 20 ms of queue keeps the sender at the rate without drops.
            await RunAsync("tc", "qdisc", "add", "dev", link._hostEnd, "root", "tbf", "rate", rate, "burst", "4mb", "latency", "20ms");
            await RunAsync("tc", "-n", link._namespace, "qdisc", "add", "dev", link._namespaceEnd, "root", "tbf", "rate", rate, "burst", "4mb", "latency", "20ms");
            return link;
        }
        catch
        {
            await link.DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts a parameter server inside the namespace, serving <paramref name="secret"/>'s members over plain TCP.</summary>
    public async Task<RemoteServer> StartServerAsync(ClusterSecret secret)
    {
        var start = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in new[] { "netns", "exec", _namespace, Environment.ProcessPath!, typeof(ShapedLink).Assembly.Location, ServeArgument, RemoteAddress })
            start.ArgumentList.Add(argument);
        start.Environment[ClusterSecret.EnvironmentVariable] = secret.Value;
        // ip netns exec execs the program: the process is the server itself, and its CPU time is the server's.
        var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEndAsync();
        var ready = ReadUntilReadyAsync(process.StandardOutput);
        try
        {
            string? line = await ready.WaitAsync(TimeSpan.FromSeconds(60)).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : null);
            var fields = line?.Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[^1]);
            if (fields is null || !fields.TryGetValue("url", out string? url) || !fields.TryGetValue("sink", out string? sink))
                throw new InvalidOperationException(process.WaitForExit(TimeSpan.FromSeconds(5))
                    ? $"the server on the link exited with {process.ExitCode} before it listened: {await errors}"
                    : "the server on the link did not say where it listens within 60 s");
            return new RemoteServer(process, url, new IPEndPoint(IPAddress.Parse(RemoteAddress), int.Parse(sink)));
        }
        catch
        {
            process.Kill(entireProcessTree: true);
            process.Dispose();
            throw;
        }
    }

    /// <summary>The server's "url=… sink=…" line (null if it ended first); what it writes after that is read and dropped.</summary>
    private static async Task<string?> ReadUntilReadyAsync(StreamReader output)
    {
        while (await output.ReadLineAsync() is { } line)
            if (line.StartsWith("url=", StringComparison.Ordinal))
            {
                _ = output.BaseStream.CopyToAsync(Stream.Null);
                return line;
            }
        return null;
    }

    /// <summary>
    /// In the child: a parameter server on <paramref name="address"/> (the secret from the
    /// environment), and a sink that takes a length and then that many bytes and answers one
    /// byte, for the link's raw rate. Prints "url=… sink=PORT" once both listen; ends when its
    /// standard input closes (the parent ended or let it go).
    /// </summary>
    public static async Task ServeAsync(string address)
    {
        var secret = ClusterSecret.Parse(Environment.GetEnvironmentVariable(ClusterSecret.EnvironmentVariable) ?? "", ClusterSecret.EnvironmentVariable);
        var options = new ParameterServerOptions { BindAddress = address, Security = new ClusterSecurity { Secret = secret, AllowPlaintext = true } };
        await using var host = await ParameterServerHost.StartAsync(options, CancellationToken.None);
        using var sink = new TcpListener(IPAddress.Parse(address), 0);
        sink.Start();
        _ = Task.Run(() => SinkAsync(sink));
        Console.WriteLine($"url={host.Url} sink={((IPEndPoint)sink.LocalEndpoint).Port}");
        await Console.In.ReadToEndAsync();
    }

    private static async Task SinkAsync(TcpListener listener)
    {
        while (true)
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var length = new byte[sizeof(long)];
            await stream.ReadExactlyAsync(length);
            var buffer = new byte[1 << 20];
            for (long left = BitConverter.ToInt64(length); left > 0;)
            {
                int n = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)));
                if (n == 0) break;
                left -= n;
            }
            await stream.WriteAsync(new byte[1]);
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Deleting the namespace deletes its end of the pair, and with it this one.
        await RunAsync("ip", "netns", "del", _namespace).ContinueWith(_ => { });
        await RunAsync("ip", "link", "del", _hostEnd).ContinueWith(_ => { });
    }

    private static async Task RunAsync(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        string error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(CommandTimeout);
        await output;
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"`{program} {string.Join(' ', arguments)}` exited with {process.ExitCode}: {error.Trim()}");
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Concat(["/usr/sbin", "/sbin"]).Any(folder => File.Exists(Path.Combine(folder, program)));
}

/// <summary>A parameter server in the link's namespace: its URL, its CPU time so far, and the raw rate of the link to it.</summary>
public sealed class RemoteServer(Process process, string url, IPEndPoint sink) : IAsyncDisposable
{
    public string Url => url;

    /// <summary>The server process's CPU time so far.</summary>
    public TimeSpan Cpu
    {
        get
        {
            process.Refresh();
            return process.TotalProcessorTime;
        }
    }

    /// <summary>Raw TCP throughput to the server's end of the link, one direction: <paramref name="totalBytes"/> in 1 MiB writes, until the sink has them all.</summary>
    public async Task<double> MeasureGigabytesPerSecondAsync(long totalBytes)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(sink);
        var stream = client.GetStream();
        await stream.WriteAsync(BitConverter.GetBytes(totalBytes));
        var block = new byte[1 << 20];
        var watch = Stopwatch.StartNew();
        for (long sent = 0; sent < totalBytes; sent += block.Length)
            await stream.WriteAsync(block.AsMemory(0, (int)Math.Min(block.Length, totalBytes - sent)));
        await stream.ReadExactlyAsync(new byte[1]);
        return totalBytes / watch.Elapsed.TotalSeconds / 1e9;
    }

    public async ValueTask DisposeAsync()
    {
        process.StandardInput.Close();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException) { process.Kill(entireProcessTree: true); }
        process.Dispose();
    }
}
