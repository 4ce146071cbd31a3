using System.Diagnostics;

namespace Cluster.Cli.Local;

/// <summary>Ends this process when the process that started it is gone, so that no role outlives `cluster local`.</summary>
public static class ParentWatch
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(500);

    public static void Start(int parentPid)
    {
        _ = Task.Run(async () =>
        {
            while (true)
            {
                await Task.Delay(PollInterval);
                if (!IsAlive(parentPid))
                {
                    await Console.Error.WriteLineAsync($"parent process {parentPid} is gone; exiting");
                    Environment.Exit(3);
                }
            }
        });
    }

    private static bool IsAlive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
