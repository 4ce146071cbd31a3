namespace Cluster.Shared.Checkpoints;

/// <summary>Writes a file so that a crash leaves either the old file or the whole new one, never a part.</summary>
public static class AtomicFile
{
    /// <summary>
    /// Writes through <paramref name="write"/> into a temporary file next to <paramref name="path"/>,
    /// flushes it to the disk (fsync), then renames it over <paramref name="path"/>.
    /// </summary>
    public static void Write(string path, Action<FileStream> write)
    {
        string temporary = $"{path}.{Environment.ProcessId}.tmp";
        try
        {
            using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(file);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        catch
        {
            File.Delete(temporary);
            throw;
        }
    }
}
