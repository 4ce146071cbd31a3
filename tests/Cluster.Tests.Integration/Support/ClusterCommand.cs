using System.Diagnostics;
using System.Text;

namespace Cluster.Tests.Integration.Support;

/// <summary>
/// The real `cluster` executable (built next to the tests) run as a child process. Output is
/// captured; the process and everything it started are killed on dispose, pass or fail.
/// </summary>
public sealed class ClusterCommand : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();

    private ClusterCommand(Process process) => _process = process;

    public int ProcessId => _process.Id;
    public bool HasExited => _process.HasExited;
    public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }
    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>Starts `cluster ARGS` with the tests' cluster secret in CLUSTER_SECRET.</summary>
    public static ClusterCommand Start(params string[] arguments) => StartWith(new Dictionary<string, string?> { ["CLUSTER_SECRET"] = TestSecurity.Secret.Value }, arguments);

    /// <summary>Starts `cluster ARGS` with these environment variables set (null: removed).</summary>
    public static ClusterCommand StartWith(IReadOnlyDictionary<string, string?> environment, params string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "cluster.dll"));
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        foreach (var (name, value) in environment)
        {
            if (value is null) start.Environment.Remove(name);
            else start.Environment[name] = value;
        }
        var process = new Process { StartInfo = start };
        var command = new ClusterCommand(process);
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (command._stdout) command._stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (command._stderr) command._stderr.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return command;
    }

    /// <summary>Waits for the exit code; fails the test (after killing the tree) past <paramref name="timeout"/>.</summary>
    public async Task<int> WaitAsync(TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            Kill();
            Assert.Fail($"`cluster` did not exit within {timeout.TotalSeconds:0} s.\nstdout:\n{Stdout}\nstderr:\n{Stderr}");
        }
        _process.WaitForExit(); // drains the output readers
        return _process.ExitCode;
    }

    /// <summary>Waits for a line of stdout that starts with <paramref name="prefix"/> and returns the rest of it.</summary>
    public async Task<string> WaitForLineAsync(string prefix, TimeSpan timeout)
    {
        var giveUpAt = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < giveUpAt)
        {
            string? line = Stdout.Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
            if (line is not null) return line[prefix.Length..].Trim();
            if (_process.HasExited) break;
            await Task.Delay(100);
        }
        Kill();
        Assert.Fail($"no line starting with '{prefix}' within {timeout.TotalSeconds:0} s.\nstdout:\n{Stdout}\nstderr:\n{Stderr}");
        return "";
    }

    /// <summary>Runs to completion and returns (exit code, stdout, stderr).</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TimeSpan timeout, params string[] arguments)
    {
        using var command = Start(arguments);
        int exitCode = await command.WaitAsync(timeout);
        return (exitCode, command.Stdout, command.Stderr);
    }

    public void Kill()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); }
        catch (InvalidOperationException) { }
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}
