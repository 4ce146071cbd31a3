using System.CommandLine;
using System.Text.Json;
using Cluster.Cli.Api;
using Cluster.Cli.Commands;
using Cluster.Cli.Local;
using Cluster.Cli.Watching;
using Cluster.Coordinator.Api;
using Cluster.Shared.Jobs;
using Cluster.Shared.Tuning;
using Spectre.Console;

namespace Cluster.Cli.Tuning;

/// <summary>
/// `cluster sweep`: hyperparameter search. Every trial is a job on the cluster (a running
/// coordinator with --api, else a local cluster started for the sweep); all are submitted at
/// once to the coordinator's FIFO queue, followed to the end, and ranked by the validation metric.
/// </summary>
public static class SweepCommand
{
    public sealed record TrialResult(
        int Rank, int Trial, string JobId, string State, double LearningRate, int BatchSize, double WeightDecay,
        double Accuracy, double? TestLoss, double? Perplexity, double Seconds, string? Error);

    public sealed record SweepResult(string Metric, IReadOnlyList<TrialResult> Trials);

    public static Command Create()
    {
        var job = new JobOptions();
        var lrs = new Option<string[]>("--lrs") { Description = "Learning rates to try, comma-separated (grid), or the range to draw from log-uniformly (random)", AllowMultipleArgumentsPerToken = true };
        var batchSizes = new Option<string[]>("--batch-sizes") { Description = "Batch sizes per worker to try, comma-separated", AllowMultipleArgumentsPerToken = true };
        var weightDecays = new Option<string[]>("--weight-decays") { Description = "Weight decays to try, comma-separated", AllowMultipleArgumentsPerToken = true };
        var search = new Option<string>("--search") { Description = "grid (every combination) or random", DefaultValueFactory = _ => "grid" };
        var trials = new Option<int>("--trials") { Description = "Number of trials of a random search", DefaultValueFactory = _ => 8 };
        var api = new Option<string?>("--api") { Description = "A running coordinator's JSON API; default: start a local cluster for the sweep" };
        var output = new Option<string>("--output") { Description = "text, or json: the ranked trials as one JSON document on stdout", DefaultValueFactory = _ => "text" };
        var command = new Command("sweep", "Tune hyperparameters: run one job per trial on the cluster and rank them by the validation metric")
        {
            lrs, batchSizes, weightDecays, search, trials, api, output,
        };
        job.AddTo(command);
        var security = new SecurityOptions();
        security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            bool json = parse.GetValue(output) switch
            {
                "json" => true,
                "text" => false,
                var other => throw new CliException($"output: '{other}' is not a format; expected text or json", exitCode: 2),
            };
            var baseSpec = job.Read(parse);
            var space = new SweepSpace(
                List(parse.GetValue(lrs), "lrs", double.Parse, baseSpec.Optimizer.LearningRate),
                List(parse.GetValue(batchSizes), "batch-sizes", int.Parse, baseSpec.BatchSize),
                List(parse.GetValue(weightDecays), "weight-decays", double.Parse, baseSpec.Optimizer.WeightDecay));
            IReadOnlyList<Trial> plan;
            try { plan = SweepPlan.Trials(baseSpec, space, parse.GetValue(search)!, parse.GetValue(trials)); }
            catch (ArgumentException e) { throw new CliException(e.Message, exitCode: 2); }
            var errors = plan.SelectMany(t => t.Spec.Validate()).Distinct().ToList();
            if (errors.Count > 0) throw new CliException(string.Join(Environment.NewLine, errors), exitCode: 2);

            var console = json ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }) : AnsiConsole.Console;
            IReadOnlyList<JobView> views;
            if (parse.GetValue(api) is { } url)
            {
                using var remote = new CoordinatorApi(url, security.Read(parse), TimeSpan.FromSeconds(30));
                views = await RunAsync(remote, [], plan, console, cancellationToken);
            }
            else
            {
                bool given = parse.GetValue(security.Secret) is not null || parse.GetValue(security.SecretFile) is not null
                    || Environment.GetEnvironmentVariable(Shared.Security.ClusterSecret.EnvironmentVariable) is { Length: > 0 };
                var local = new LocalCluster(console, security.Read(parse, generateWhenMissing: true), secretGenerated: !given, [.. security.ChildArguments(parse)]);
                views = await local.RunAsync(baseSpec, (client, roles, token) => RunAsync(client, roles, plan, console, token), cancellationToken);
            }
            var result = Rank(plan, views, baseSpec.IsLanguageModel);
            if (json) Console.Out.WriteLine(JsonSerializer.Serialize(result, CoordinatorApi.Json));
            else Print(console, result);
            return result.Trials.All(t => t.State == "succeeded") ? 0 : 1;
        });
        return command;
    }

    /// <summary>"1e-3,3e-3" or "1e-3 3e-3" → values; none given → the single job option's value.</summary>
    private static IReadOnlyList<T> List<T>(string[]? values, string name, Func<string, T> parse, T fallback)
    {
        var items = (values ?? []).SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();
        try { return items.Count > 0 ? [.. items.Select(parse)] : [fallback]; }
        catch (FormatException) { throw new CliException($"{name}: '{string.Join(",", items)}' is not a list of numbers; expected e.g. 1e-3,3e-3", exitCode: 2); }
        catch (OverflowException) { throw new CliException($"{name}: '{string.Join(",", items)}' holds a number out of range", exitCode: 2); }
    }

    private static async Task<IReadOnlyList<JobView>> RunAsync(
        CoordinatorApi api, IReadOnlyList<RoleProcess> roles, IReadOnlyList<Trial> plan, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var submitted = new List<JobView>();
        foreach (var trial in plan) submitted.Add(await api.SubmitAsync(trial.Spec, cancellationToken));
        var finished = new List<JobView>();
        foreach (var (trial, job) in plan.Zip(submitted))
        {
            console.MarkupLineInterpolated($"Trial {trial.Number}/{plan.Count} ({job.Id}): lr {trial.Spec.Optimizer.LearningRate:G4}, batch size {trial.Spec.BatchSize}, weight decay {trial.Spec.Optimizer.WeightDecay:G4}");
            finished.Add(await new JobWatcher(api, console, roles).WatchAsync(job.Id, cancellationToken));
        }
        return finished;
    }

    private static SweepResult Rank(IReadOnlyList<Trial> plan, IReadOnlyList<JobView> views, bool languageModel)
    {
        var rows = plan.Zip(views).Select(p =>
        {
            var last = p.Second.Epochs.Count > 0 ? p.Second.Epochs[^1] : null;
            return new TrialResult(0, p.First.Number, p.Second.Id, p.Second.State, p.First.Spec.Optimizer.LearningRate, p.First.Spec.BatchSize,
                p.First.Spec.Optimizer.WeightDecay, last?.Accuracy ?? 0, last?.TestLoss, last?.Perplexity,
                p.Second.Epochs.Sum(e => e.Seconds), p.Second.Error);
        });
        var ranked = SweepPlan.Rank(rows, r => (r.State == "succeeded", r.Accuracy, r.TestLoss ?? double.PositiveInfinity), languageModel);
        return new SweepResult(SweepPlan.Metric(languageModel), [.. ranked.Select((r, i) => r with { Rank = i + 1 })]);
    }

    private static void Print(IAnsiConsole console, SweepResult result)
    {
        var table = new Table().Title($"Sweep: {result.Trials.Count} trials ranked by {result.Metric}");
        foreach (string column in new[] { "rank", "trial", "job", "lr", "batch size", "weight decay", "accuracy", "val loss", "perplexity", "seconds", "state" })
            table.AddColumn(new TableColumn(column).RightAligned());
        foreach (var t in result.Trials)
            table.AddRow($"{t.Rank}", $"{t.Trial}", t.JobId, $"{t.LearningRate:G4}", $"{t.BatchSize}", $"{t.WeightDecay:G4}", $"{t.Accuracy:P2}",
                t.TestLoss is { } loss ? $"{loss:0.0000}" : "-", t.Perplexity is { } p ? $"{p:0.00}" : "-", $"{t.Seconds:0.0}", Markup.Escape(t.State));
        console.Write(table);
    }
}
