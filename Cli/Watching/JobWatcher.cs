using Cluster.Cli.Api;
using Cluster.Cli.Local;
using Cluster.Coordinator.Api;
using Spectre.Console;

namespace Cluster.Cli.Watching;

/// <summary>
/// Follows a job through the coordinator's API until it ends, drawing a live progress bar
/// (epoch, step, loss, samples/s) on an interactive terminal and plain progress lines
/// otherwise. Fails fast when one of the local roles dies.
/// </summary>
public sealed class JobWatcher(CoordinatorApi api, IAnsiConsole console, IReadOnlyList<RoleProcess> roles)
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(500);
    private static readonly TimeSpan PlainLineInterval = TimeSpan.FromSeconds(10);

    public async Task<JobView> WatchAsync(string jobId, CancellationToken cancellationToken)
    {
        if (!console.Profile.Capabilities.Interactive) return await WatchPlainAsync(jobId, cancellationToken);
        JobView? final = null;
        await console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .StartAsync(async context =>
            {
                var bar = context.AddTask($"{jobId}: waiting for workers", maxValue: 1.0);
                while (true)
                {
                    var job = await PollAsync(jobId, cancellationToken);
                    bar.Description = Markup.Escape(Describe(job));
                    bar.Value = Fraction(job);
                    if (IsOver(job)) { final = job; bar.StopTask(); return; }
                    await Task.Delay(PollInterval, cancellationToken);
                }
            });
        return final!;
    }

    private async Task<JobView> WatchPlainAsync(string jobId, CancellationToken cancellationToken)
    {
        var lastLine = DateTime.MinValue;
        int lastEpoch = -1;
        while (true)
        {
            var job = await PollAsync(jobId, cancellationToken);
            int epoch = job.Progress?.Epoch ?? -1;
            if (IsOver(job) || epoch != lastEpoch || DateTime.UtcNow - lastLine >= PlainLineInterval)
            {
                console.WriteLine($"[{Fraction(job),4:P0}] {Describe(job)}");
                (lastLine, lastEpoch) = (DateTime.UtcNow, epoch);
            }
            if (IsOver(job)) return job;
            await Task.Delay(PollInterval, cancellationToken);
        }
    }

    /// <summary>How long the watcher keeps asking a coordinator that does not answer (one with a state file may be restarting).</summary>
    public static readonly TimeSpan UnreachableMax = TimeSpan.FromSeconds(60);

    private DateTime? _unreachableSince;

    private async Task<JobView> PollAsync(string jobId, CancellationToken cancellationToken)
    {
        while (true)
        {
            foreach (var role in roles)
                if (role.HasExited)
                    throw new CliException(role.Describe($"exited with code {role.ExitCode} while job {jobId} was running"), exitCode: 1);
            try
            {
                var job = await api.GetJobAsync(jobId, cancellationToken);
                _unreachableSince = null;
                return job;
            }
            catch (Shared.Rpc.PeerUnreachableException e) when (DateTime.UtcNow - (_unreachableSince ??= DateTime.UtcNow) < UnreachableMax)
            {
                console.WriteLine($"{e.Message}; asking again (gives up after {UnreachableMax.TotalSeconds:0} s)");
                await Task.Delay(PollInterval * 2, cancellationToken);
            }
        }
    }

    private static bool IsOver(JobView job) => job.State is "succeeded" or "failed" or "cancelled";

    private static double Fraction(JobView job)
    {
        if (job.State == "succeeded") return 1;
        if (job.Progress is not { } p) return 0;
        double epochFraction = p.StepsTotal > 0 ? (double)p.StepsDone / p.StepsTotal : 0;
        return Math.Clamp((p.Epoch + epochFraction) / p.Epochs, 0, 1);
    }

    private static string Describe(JobView job)
    {
        if (job.State == "queued") return $"{job.Id}: queued, waiting for {job.Spec.Workers} idle workers";
        if (job.Progress is not { } p) return $"{job.Id}: {job.State}, loading data";
        string state = job.State == "running" ? "" : $" {job.State}";
        return $"{job.Id}{state}: epoch {p.Epoch + 1}/{p.Epochs} step {p.StepsDone}/{p.StepsTotal} loss {p.Loss:0.0000} {p.SamplesPerSecond:#,0} samples/s";
    }
}
