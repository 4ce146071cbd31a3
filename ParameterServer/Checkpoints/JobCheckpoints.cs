using System.Diagnostics;
using System.Text;
using Cluster.ParameterServer.Training;
using Microsoft.Extensions.Logging;

namespace Cluster.ParameterServer.Checkpoints;

/// <summary>When a parameter server checkpoints its jobs, and where.</summary>
public sealed record CheckpointOptions
{
    /// <summary>Root folder; each job's key range gets <c>JOB/rSTART/</c> under it. Null: no checkpoints.</summary>
    public string? Directory { get; init; }
    /// <summary>Checkpoint each time the version is a multiple of this; 0: not by steps.</summary>
    public int EverySteps { get; init; }
    /// <summary>Checkpoint at the first version reached this long after the last checkpoint; zero: not by time.</summary>
    public TimeSpan Every { get; init; }
    /// <summary>Checkpoints kept per job and range; older ones are deleted once a newer one is written.</summary>
    public int Keep { get; init; } = 2;

    public bool Enabled => Directory is not null && (EverySteps > 0 || Every > TimeSpan.Zero);

    public IEnumerable<string> Validate()
    {
        if (EverySteps < 0) yield return $"checkpoint-steps: {EverySteps}; expected 0 (off) or more";
        if (Every < TimeSpan.Zero) yield return $"checkpoint-seconds: {Every.TotalSeconds}; expected 0 (off) or more";
        if (Keep < 1) yield return $"checkpoint-keep: {Keep}; expected 1 or more";
        if (Directory is null && (EverySteps > 0 || Every > TimeSpan.Zero))
            yield return "checkpoint-dir: none given; checkpoint-steps or checkpoint-seconds need a folder to write to";
    }
}

/// <summary>
/// Writes each job's checkpoints on its schedule (on the thread that applied a step's last
/// partition, so the snapshot is consistent and a crash loses fewer steps than the interval),
/// and finds the newest valid checkpoint of every job at start; a corrupt one is reported and
/// skipped.
/// </summary>
public sealed partial class JobCheckpoints(CheckpointOptions options, ILogger logger)
{
    private readonly Dictionary<JobParameters, long> _lastWrittenAt = [];

    public CheckpointOptions Options => options;

    /// <summary>Checkpoints written since start.</summary>
    public long Written { get; private set; }

    /// <summary>The folder of one job's key range.</summary>
    public string DirectoryOf(string jobId, long rangeStart) => Path.Combine(options.Directory!, JobFolder(jobId), $"r{rangeStart}");

    /// <summary>Starts checkpointing <paramref name="job"/> on the schedule.</summary>
    public void Attach(JobParameters job)
    {
        if (!options.Enabled) return;
        if (job.HasParameterGroups)
        {
            // A snapshot holds one optimizer's state; restoring groups (a GAN's two optimizers) would lose theirs.
            LogGroupsNotCheckpointed(logger, job.JobId);
            return;
        }
        lock (_lastWrittenAt) _lastWrittenAt[job] = Stopwatch.GetTimestamp();
        job.VersionReached = OnVersionReached;
    }

    /// <summary>Stops checkpointing a finished job and deletes its checkpoints.</summary>
    public void Detach(JobParameters job)
    {
        job.VersionReached = null;
        lock (_lastWrittenAt) _lastWrittenAt.Remove(job);
        if (options.Directory is null) return;
        string directory = DirectoryOf(job.JobId, job.RangeStart);
        try { if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true); }
        catch (IOException e) { LogDeleteFailed(logger, directory, e.Message); }
    }

    private void OnVersionReached(JobParameters job, long version)
    {
        long now = Stopwatch.GetTimestamp();
        bool due;
        lock (_lastWrittenAt)
        {
            long last = _lastWrittenAt.GetValueOrDefault(job, now);
            due = (options.EverySteps > 0 && version % options.EverySteps == 0)
                || (options.Every > TimeSpan.Zero && Stopwatch.GetElapsedTime(last, now) >= options.Every);
            if (due) _lastWrittenAt[job] = now;
        }
        if (due) Write(job);
    }

    /// <summary>Writes a checkpoint of <paramref name="job"/> now (consistent only while no step is applied).</summary>
    public void Write(JobParameters job)
    {
        string directory = DirectoryOf(job.JobId, job.RangeStart);
        try
        {
            var snapshot = job.Snapshot();
            CheckpointFile.Write(directory, snapshot);
            Written++;
            LogWritten(logger, job.JobId, snapshot.Version, directory);
            Prune(directory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A full disk must not stop training: the previous checkpoint stays valid.
            LogWriteFailed(logger, job.JobId, job.Version, directory, e.Message);
        }
    }

    /// <summary>The newest valid checkpoint of every job and key range under the root; corrupt ones are logged and skipped.</summary>
    public List<JobSnapshot> LoadNewest()
    {
        var found = new List<JobSnapshot>();
        if (options.Directory is null || !Directory.Exists(options.Directory)) return found;
        foreach (string jobDirectory in Directory.EnumerateDirectories(options.Directory))
            foreach (string rangeDirectory in Directory.EnumerateDirectories(jobDirectory, "r*"))
                if (LoadNewest(rangeDirectory) is { } snapshot) found.Add(snapshot);
        return found;
    }

    /// <summary>The newest checkpoint in one folder that reads back whole, or null.</summary>
    public JobSnapshot? LoadNewest(string directory)
    {
        foreach (string statePath in StateFiles(directory))
        {
            try
            {
                var snapshot = CheckpointFile.Read(statePath);
                if (DirectoryOf(snapshot.JobId, snapshot.RangeStart) != directory.TrimEnd(Path.DirectorySeparatorChar))
                    throw new InvalidDataException($"{statePath}: holds job {snapshot.JobId} range {snapshot.RangeStart}, which belongs in another folder");
                if (CheckpointFile.BaseName(snapshot.Version) != Path.GetFileNameWithoutExtension(statePath))
                    throw new InvalidDataException($"{statePath}: holds version {snapshot.Version}; its name says otherwise");
                LogLoaded(logger, snapshot.JobId, snapshot.Version, statePath);
                return snapshot;
            }
            catch (InvalidDataException e)
            {
                LogCorrupt(logger, statePath, e.Message);
            }
        }
        return null;
    }

    /// <summary>State files of a folder, newest version first.</summary>
    private static IEnumerable<string> StateFiles(string directory) =>
        Directory.EnumerateFiles(directory, "v*" + CheckpointFile.StateExtension)
            .Where(p => long.TryParse(Path.GetFileNameWithoutExtension(p).AsSpan(1), out _))
            .OrderByDescending(p => long.Parse(Path.GetFileNameWithoutExtension(p).AsSpan(1), System.Globalization.CultureInfo.InvariantCulture));

    private void Prune(string directory)
    {
        foreach (string statePath in StateFiles(directory).Skip(options.Keep))
        {
            File.Delete(statePath);
            File.Delete(Path.ChangeExtension(statePath, CheckpointFile.ParametersExtension));
        }
    }

    /// <summary>A job id as a folder name: itself when it is plain, else a hex encoding.</summary>
    private static string JobFolder(string jobId) =>
        jobId.Length <= 100 && jobId.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_') ? jobId : "x" + Convert.ToHexStringLower(Encoding.UTF8.GetBytes(jobId));

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId} has parameter groups (their own optimizers): it is not checkpointed")]
    private static partial void LogGroupsNotCheckpointed(ILogger logger, string jobId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint of job {JobId} at version {Version} written to {Directory}")]
    private static partial void LogWritten(ILogger logger, string jobId, long version, string directory);

    [LoggerMessage(Level = LogLevel.Error, Message = "Checkpoint of job {JobId} at version {Version} could not be written to {Directory}: {Reason}")]
    private static partial void LogWriteFailed(ILogger logger, string jobId, long version, string directory, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Loaded job {JobId} at version {Version} from checkpoint {Path}")]
    private static partial void LogLoaded(ILogger logger, string jobId, long version, string path);

    [LoggerMessage(Level = LogLevel.Error, Message = "Skipped corrupt checkpoint {Path}: {Reason}")]
    private static partial void LogCorrupt(ILogger logger, string path, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not delete the checkpoints in {Directory}: {Reason}")]
    private static partial void LogDeleteFailed(ILogger logger, string directory, string reason);
}
