namespace Cluster.Tests.Integration.Support;

/// <summary>Reads Linux's /proc to find processes by their command line.</summary>
public static class ProcessTable
{
    /// <summary>Pids of live processes whose command line contains <paramref name="text"/>.</summary>
    public static List<int> WithCommandLineContaining(string text)
    {
        var found = new List<int>();
        foreach (string directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), out int pid)) continue;
            try
            {
                string commandLine = File.ReadAllText(Path.Combine(directory, "cmdline")).Replace('\0', ' ');
                if (commandLine.Contains(text, StringComparison.Ordinal)) found.Add(pid);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return found;
    }
}
