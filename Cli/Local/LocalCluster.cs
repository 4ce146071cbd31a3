using System.Globalization;
using Cluster.Cli.Api;
using Cluster.Cli.Watching;
using Cluster.Coordinator.Api;
using Cluster.Shared.Jobs;
using Cluster.Shared.Security;
using Cluster.Worker.Data;
using Spectre.Console;

namespace Cluster.Cli.Local;

/// <summary>
/// `cluster local`: a coordinator, one parameter server and N workers as separate OS processes
/// on loopback; submits the job, follows it, and stops every process it started. The roles get
/// the cluster secret through their environment (never on a command line others can read).
/// </summary>
public sealed class LocalCluster(IAnsiConsole console, ClusterSecurity security, bool secretGenerated, IReadOnlyList<string> tlsArguments,
    LocalObservability? observability = null, IReadOnlyList<string>? devices = null)
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Where the workers take the dataset from (worker --data-source); null: their default.</summary>
    public string? WorkerDataSource { get; init; }
    /// <summary>How ring segments travel (worker --ring-transport); null: their default.</summary>
    public string? WorkerRingTransport { get; init; }
    /// <summary>How pushes and pulls travel (worker --ps-transport); null: their default.</summary>
    public string? WorkerPsTransport { get; init; }

    public Task<JobView> RunAsync(JobSpecification spec, CancellationToken cancellationToken) =>
        RunAsync(spec, async (api, roles, token) =>
        {
            var job = await api.SubmitAsync(spec, token);
            var result = await new JobWatcher(api, console, roles).WatchAsync(job.Id, token);
            if (observability?.TimelinePath is { } timeline)
            {
                await api.SaveTimelineAsync(job.Id, timeline, token);
                console.MarkupLineInterpolated($"Timeline (Chrome trace, opens in Perfetto): {timeline}");
            }
            return result;
        }, cancellationToken);

    /// <summary>Starts the cluster sized for <paramref name="spec"/>, runs <paramref name="work"/> against its API, stops it.</summary>
    public async Task<T> RunAsync<T>(JobSpecification spec, Func<CoordinatorApi, IReadOnlyList<RoleProcess>, CancellationToken, Task<T>> work, CancellationToken cancellationToken)
    {
        Check(spec);
        string logDirectory = Directory.CreateTempSubdirectory("cluster-local-").FullName;
        string secretFile = Path.Combine(logDirectory, "secret");
        security.Secret.WriteTo(secretFile);
        var roles = new List<RoleProcess>();
        try
        {
            var coordinator = Start(roles, "coordinator", ["coordinator", "--port", "0", "--http-port", "0", .. tlsArguments], logDirectory);
            var urls = ParseUrls(await coordinator.WaitReadyAsync(ReadyTimeout, cancellationToken));
            bool withServer = spec.Scheme != "allreduce";
            var servers = Enumerable.Range(0, withServer ? spec.ParameterServers : 0)
                .Select(k => Start(roles, $"parameter server {k}", ["ps", "--coordinator", urls["grpc"], .. tlsArguments, .. ServerExtras(k)], logDirectory))
                .ToList();
            foreach (var server in servers) await server.WaitReadyAsync(ReadyTimeout, cancellationToken);
            int threads = Math.Max(1, Environment.ProcessorCount / spec.Workers);
            for (int i = 0; i < spec.Workers; i++)
                Start(roles, $"worker {i}", ["worker", "--coordinator", urls["grpc"], "--threads", threads.ToString(), .. tlsArguments, .. WorkerExtras(i, spec.Workers)], logDirectory);
            console.MarkupLineInterpolated(
                $"Local cluster: coordinator {urls["grpc"]} (API {urls["http"]}), {(withServer ? $"{spec.ParameterServers} parameter server(s)" : "ring all-reduce")}, {spec.Workers} worker(s) with {threads} thread(s) each; logs in {logDirectory}");
            console.MarkupLineInterpolated(
                $"Cluster secret: {(secretGenerated ? "generated for this run" : "yours")}, also in {secretFile}; other commands need it, e.g. `cluster status --api {urls["http"]} --secret-file {secretFile}{string.Concat(tlsArguments.Select(a => " " + a))}`");
            console.MarkupLineInterpolated($"Dashboard: {urls["http"]}/ (log in with the cluster secret: `cat {secretFile}`)");

            using var api = new CoordinatorApi(urls["http"], security, TimeSpan.FromSeconds(30));
            return await work(api, roles, cancellationToken);
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(e.Message, exitCode: 1);
        }
        finally
        {
            foreach (var role in roles) await role.DisposeAsync();
        }
    }

    /// <summary>Per-worker options: one device each from --devices (round robin), TensorBoard, and the test-only slow worker.</summary>
    private string[] WorkerExtras(int index, int workers) =>
    [
        .. devices is { Count: > 0 } ? new[] { "--device", devices[index % devices.Count] } : [],
        .. observability?.TensorBoardDirectory is { } dir ? new[] { "--tensorboard", dir } : [],
        .. observability is { SlowWorkerMillis: > 0 } o && index == workers - 1 ? new[] { "--slow-step-ms", o.SlowWorkerMillis.ToString() } : [],
        .. WorkerDataSource is { } source ? new[] { "--data-source", source } : [],
        .. WorkerRingTransport is { } transport ? new[] { "--ring-transport", transport } : [],
        .. WorkerPsTransport is { } psTransport ? new[] { "--ps-transport", psTransport } : [],
        .. observability is { NanGradientStep: >= 0 } n && index == 0 ? new[] { "--nan-at-step", n.NanGradientStep.ToString(CultureInfo.InvariantCulture) } : [],
    ];

    /// <summary>Per-server options: checkpoints, each server in its own folder (a server loads every checkpoint under its folder).</summary>
    private string[] ServerExtras(int index) => observability?.CheckpointDirectory is { } root
        ?
        [
            "--checkpoint-dir", Path.Combine(root, $"ps-{index}"),
            "--checkpoint-steps", observability.CheckpointSteps.ToString(CultureInfo.InvariantCulture),
            "--checkpoint-seconds", observability.CheckpointSeconds.ToString(CultureInfo.InvariantCulture),
        ]
        : [];

    /// <summary>Rejects a bad job before any process starts.</summary>
    private static void Check(JobSpecification spec)
    {
        var errors = spec.Validate();
        if (errors.Count > 0) throw new CliException(string.Join(Environment.NewLine, errors), exitCode: 2);
        if (spec.AssemblyPath is { } assembly)
        {
            // The workers run here: check the assembly and the type before starting them.
            try { Worker.Tasks.UserTaskLoader.FindType(assembly, spec.TaskType!); }
            catch (Exception e) when (e is FileNotFoundException or InvalidOperationException) { throw new CliException(e.Message, exitCode: 2); }
            return;
        }
        try
        {
            DatasetCatalog.Locate(spec.Dataset, spec.DataDir);
        }
        catch (FileNotFoundException e)
        {
            throw new CliException(e.Message, exitCode: 2);
        }
    }

    private RoleProcess Start(List<RoleProcess> roles, string name, string[] arguments, string logDirectory)
    {
        var environment = new Dictionary<string, string> { [ClusterSecret.EnvironmentVariable] = security.Secret.Value };
        var role = RoleProcess.Start(name, arguments, Path.Combine(logDirectory, name.Replace(' ', '-') + ".log"), environment);
        roles.Add(role);
        return role;
    }

    /// <summary>"grpc=URL http=URL" → {grpc: URL, http: URL}.</summary>
    public static Dictionary<string, string> ParseUrls(string readyLine) =>
        readyLine.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(part => part.Split('=', 2))
            .Where(pair => pair.Length == 2)
            .ToDictionary(pair => pair[0], pair => pair[1]);
}

/// <summary>Observability options of `cluster local`: where to save the job's timeline, and a test-only slow worker.</summary>
public sealed record LocalObservability(string? TimelinePath, int SlowWorkerMillis, string? TensorBoardDirectory)
{
    /// <summary>Test-only fault injection: worker 0 pushes a NaN gradient at this step; -1: never.</summary>
    public long NanGradientStep { get; init; } = -1;
    /// <summary>Parameter-server checkpoints: root folder (server k uses DIR/ps-k), every N steps, every T seconds.</summary>
    public string? CheckpointDirectory { get; init; }
    public int CheckpointSteps { get; init; }
    public double CheckpointSeconds { get; init; }
}
