using System.Diagnostics;
using System.Reflection;

namespace Cluster.Cli.Local;

/// <summary>
/// One role of a local cluster running as a child OS process of this `cluster` command. Its
/// output is kept (the last lines, for error messages) and written to a log file; it is
/// killed with its whole process tree on dispose, and it exits by itself if we die
/// (it is started with --parent-pid).
/// </summary>
public sealed class RoleProcess : IAsyncDisposable
{
    public const string ReadyMarker = "CLUSTER-READY";
    private const int TailLinesMax = 40;

    private readonly Process _process;
    private readonly Queue<string> _tail = new();
    private readonly StreamWriter _log;
    private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private RoleProcess(string name, Process process, StreamWriter log) => (Name, _process, _log) = (name, process, log);

    public string Name { get; }
    public int ProcessId => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;
    public Task Exited => _process.WaitForExitAsync();

    /// <summary>Starts `cluster ROLE ARGS --parent-pid SELF`, logging to <paramref name="logPath"/>.</summary>
    public static RoleProcess Start(string name, IEnumerable<string> arguments, string logPath, IDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        string self = Environment.ProcessPath!;
        start.FileName = self;
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            start.ArgumentList.Add(Assembly.GetEntryAssembly()!.Location);
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        start.ArgumentList.Add("--parent-pid");
        start.ArgumentList.Add(Environment.ProcessId.ToString());
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) start.Environment[key] = value;

        var log = new StreamWriter(logPath, append: false) { AutoFlush = true };
        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        var role = new RoleProcess(name, process, log);
        process.OutputDataReceived += (_, e) => role.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => role.OnLine(e.Data);
        process.Exited += (_, _) => role._ready.TrySetException(new InvalidOperationException(role.Describe("exited before it was ready")));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return role;
    }

    /// <summary>The text after the ready marker, once the role printed it.</summary>
    public async Task<string> WaitReadyAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            return await _ready.Task.WaitAsync(timeout, cancellationToken);
        }
        catch (TimeoutException)
        {
            throw new InvalidOperationException(Describe($"was not ready within {timeout.TotalSeconds:0} s"));
        }
    }

    /// <summary>A message about this role with the last lines it printed.</summary>
    public string Describe(string what)
    {
        lock (_tail)
            return $"{Name} (pid {_process.Id}) {what}" +
                (_tail.Count == 0 ? "" : $"; its last output:{Environment.NewLine}  " + string.Join(Environment.NewLine + "  ", _tail));
    }

    private void OnLine(string? line)
    {
        if (line is null) return;
        lock (_tail)
        {
            _log.WriteLine(line);
            if (line.StartsWith(ReadyMarker, StringComparison.Ordinal))
            {
                _ready.TrySetResult(line[ReadyMarker.Length..].Trim());
                return;
            }
            _tail.Enqueue(line);
            if (_tail.Count > TailLinesMax) _tail.Dequeue();
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (InvalidOperationException) { }
        catch (TimeoutException) { }
        _process.Dispose();
        lock (_tail) _log.Dispose();
    }
}
