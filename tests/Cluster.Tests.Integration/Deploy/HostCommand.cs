using System.Diagnostics;
using System.Text;

namespace Cluster.Tests.Integration.Deploy;

/// <summary>A program of the host (docker, ip, tc...) run to completion with its output captured; killed past its timeout.</summary>
public static class HostCommand
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public string Describe(string what) => $"{what} exited with {ExitCode}\nstdout:\n{Tail(Stdout)}\nstderr:\n{Tail(Stderr)}";
        private static string Tail(string text) => text.Length <= 6000 ? text : "..." + text[^6000..];
    }

    public static async Task<Result> RunAsync(string program, IEnumerable<string> arguments, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (workingDirectory is not null) start.WorkingDirectory = workingDirectory;
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        using var process = new Process { StartInfo = start };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            lock (stdout) lock (stderr)
                return new Result(124, stdout.ToString(), stderr + $"\n(killed after {timeout.TotalSeconds:0} s)");
        }
        process.WaitForExit();
        lock (stdout) lock (stderr) return new Result(process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs and fails the test unless the exit code is 0.</summary>
    public static async Task<string> CheckAsync(string program, IEnumerable<string> arguments, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        var list = arguments.ToList();
        var result = await RunAsync(program, list, timeout, environment, workingDirectory);
        Assert.True(result.ExitCode == 0, result.Describe($"{program} {string.Join(' ', list)}"));
        return result.Stdout;
    }

    /// <summary>Whether a program is on PATH.</summary>
    public static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(directory => File.Exists(Path.Combine(directory, program)));

    /// <summary>Whether this process runs as root (network namespaces and the Docker engine need it).</summary>
    public static bool IsRoot =>
        File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Uid:", StringComparison.Ordinal))?.Split('\t', StringSplitOptions.RemoveEmptyEntries) is [_, "0", ..];

    /// <summary>The repository's root directory (the one holding Cluster.sln), found above the test binaries.</summary>
    public static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
            if (File.Exists(Path.Combine(directory.FullName, "Cluster.sln"))) return directory.FullName;
        throw new InvalidOperationException($"no Cluster.sln above {AppContext.BaseDirectory}");
    }
}
