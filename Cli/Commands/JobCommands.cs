using System.CommandLine;
using Cluster.Cli.Api;
using Cluster.Cli.Local;
using Cluster.Cli.Watching;
using Cluster.Coordinator.Api;
using Spectre.Console;

namespace Cluster.Cli.Commands;

/// <summary>`cluster local`, `cluster submit` and `cluster status`.</summary>
public static class JobCommands
{
    private static readonly Option<string> Output = new("--output") { Description = "text, or json: the final result as one JSON document on stdout", DefaultValueFactory = _ => "text" };
    private static readonly SecurityOptions Security = new();
    private static readonly Option<string> ApiUrl = new("--api") { Description = "Coordinator's JSON API, e.g. http://10.0.0.1:5080", Required = true };

    /// <summary>With no arguments, `cluster` runs this with its defaults: the main job.</summary>
    public static Command Local()
    {
        var job = new JobOptions();
        var timeline = new Option<string?>("--timeline") { Description = "Save the job's timeline (Chrome trace JSON, opens in Perfetto) to this file when it ends" };
        var tensorBoard = new Option<string?>("--tensorboard") { Description = "Write TensorBoard event files of the job to DIR/JOB/rank-R" };
        var slowWorker = new Option<int>("--slow-worker-ms") { Description = "Test-only fault injection: slow the last worker's steps by this many milliseconds", Hidden = true };
        var devices = new Option<string?>("--devices") { Description = "One device per worker, e.g. cuda:0,cuda:1 (round robin over the workers); default: the job's --device for all" };
        var dataSource = RoleCommands.DataSourceOption();
        var ringTransport = RoleCommands.RingTransportOption();
        var psTransport = RoleCommands.PsTransportOption();
        var nanAtStep = new Option<long>("--nan-gradient-at-step") { Description = "Test-only fault injection: worker 0 pushes a NaN gradient at this step", Hidden = true, DefaultValueFactory = _ => -1 };
        var checkpointDir = new Option<string?>("--checkpoint-dir") { Description = "Parameter servers checkpoint their jobs under this folder (server k in DIR/ps-k)" };
        var checkpointSteps = new Option<int>("--checkpoint-steps") { Description = "With --checkpoint-dir: checkpoint every N steps", DefaultValueFactory = _ => 0 };
        var checkpointSeconds = new Option<double>("--checkpoint-seconds") { Description = "With --checkpoint-dir: checkpoint at the first step T seconds after the last checkpoint", DefaultValueFactory = _ => 0 };
        var command = new Command("local", "Start a coordinator, a parameter server and N workers on this machine, train a job, print its test metrics")
        {
            Output, timeline, tensorBoard, slowWorker, devices, nanAtStep, checkpointDir, checkpointSteps, checkpointSeconds, dataSource, ringTransport,
            psTransport,
        };
        job.AddTo(command);
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            bool json = ReadOutput(parse);
            var console = ProgressConsole(json);
            bool given = parse.GetValue(Security.Secret) is not null || parse.GetValue(Security.SecretFile) is not null
                || Environment.GetEnvironmentVariable(Shared.Security.ClusterSecret.EnvironmentVariable) is { Length: > 0 };
            var observability = new LocalObservability(
                parse.GetValue(timeline) is { } path ? Path.GetFullPath(path) : null, parse.GetValue(slowWorker),
                parse.GetValue(tensorBoard) is { } dir ? Path.GetFullPath(dir) : null)
            {
                NanGradientStep = parse.GetValue(nanAtStep),
                CheckpointDirectory = parse.GetValue(checkpointDir) is { } checkpoints ? Path.GetFullPath(checkpoints) : null,
                CheckpointSteps = parse.GetValue(checkpointSteps), CheckpointSeconds = parse.GetValue(checkpointSeconds),
            };
            string[] deviceList = (parse.GetValue(devices) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            foreach (string device in deviceList)
                if (!Shared.Jobs.DeviceNames.IsValid(device))
                    throw new CliException($"devices: '{device}' is not a device; expected auto, cpu, cuda or cuda:N", exitCode: 2);
            var local = new LocalCluster(console, Security.Read(parse, generateWhenMissing: true), secretGenerated: !given,
                [.. Security.ChildArguments(parse)], observability, deviceList)
            {
                WorkerDataSource = parse.GetValue(dataSource).ToString().ToLowerInvariant(),
                WorkerRingTransport = parse.GetValue(ringTransport).ToString().ToLowerInvariant(),
                WorkerPsTransport = parse.GetValue(psTransport).ToString().ToLowerInvariant(),
            };
            var spec = job.Read(parse);
            if (spec.OutputDir is null && Shared.Jobs.JobSpecification.GenerativeModels.Contains(spec.Model) && spec.Validate().Count == 0)
            {
                // The gan's sample grids need somewhere to go: the workers run here, so a temporary directory.
                spec = spec with { OutputDir = Directory.CreateTempSubdirectory("cluster-gan-").FullName };
                console.MarkupLineInterpolated($"Sample grids and losses: {spec.OutputDir} (--output-dir to choose)");
            }
            var result = await local.RunAsync(spec, cancellationToken);
            return Report(result, json, console);
        });
        return command;
    }

    public static Command Submit()
    {
        var job = new JobOptions();
        var wait = new Option<bool>("--wait") { Description = "Follow the job until it ends and print its metrics" };
        var command = new Command("submit", "Submit a job to a running coordinator") { ApiUrl, wait, Output };
        job.AddTo(command);
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            bool json = ReadOutput(parse);
            var console = ProgressConsole(json);
            using var api = new CoordinatorApi(parse.GetValue(ApiUrl)!, Security.Read(parse), TimeSpan.FromSeconds(30));
            var submitted = await api.SubmitAsync(job.Read(parse), cancellationToken);
            if (!parse.GetValue(wait))
            {
                if (json) ResultPrinter.PrintJson(submitted);
                else console.WriteLine($"Submitted {submitted.Id} ({submitted.State})");
                return 0;
            }
            var result = await new JobWatcher(api, console, []).WatchAsync(submitted.Id, cancellationToken);
            return Report(result, json, console);
        });
        return command;
    }

    public static Command Status()
    {
        var jobId = new Argument<string?>("job") { Description = "Job id (default: list all jobs)", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("status", "Show one job, or all jobs, of a running coordinator") { ApiUrl, Output, jobId };
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            bool json = ReadOutput(parse);
            using var api = new CoordinatorApi(parse.GetValue(ApiUrl)!, Security.Read(parse), TimeSpan.FromSeconds(30));
            var jobs = parse.GetValue(jobId) is { } id ? [await api.GetJobAsync(id, cancellationToken)] : await api.ListJobsAsync(cancellationToken);
            foreach (var job in jobs)
            {
                if (json) ResultPrinter.PrintJson(job);
                else ResultPrinter.PrintTable(AnsiConsole.Console, job);
            }
            return 0;
        });
        return command;
    }

    private static bool ReadOutput(ParseResult parse) => parse.GetValue(Output) switch
    {
        "json" => true,
        "text" => false,
        var other => throw new CliException($"output: '{other}' is not a format; expected text or json", exitCode: 2),
    };

    /// <summary>Progress goes to stderr when stdout carries JSON.</summary>
    private static IAnsiConsole ProgressConsole(bool json) =>
        json ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }) : AnsiConsole.Console;

    private static int Report(JobView result, bool json, IAnsiConsole console)
    {
        if (json) ResultPrinter.PrintJson(result);
        else ResultPrinter.PrintTable(console, result);
        return result.State == "succeeded" ? 0 : 1;
    }
}
