using Cluster.Cli.Api;
using Cluster.Cli.Watching;
using Cluster.Coordinator.Api;
using Cluster.Shared.Jobs;
using Cluster.Worker.Data;
using Spectre.Console;

namespace Cluster.Cli.Local;

/// <summary>
/// `cluster local`: a coordinator, one parameter server and N workers as separate OS processes
/// on loopback; submits the job, follows it, and stops every process it started.
/// </summary>
public sealed class LocalCluster(IAnsiConsole console)
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);

    public async Task<JobView> RunAsync(JobSpecification spec, CancellationToken cancellationToken)
    {
        Check(spec);
        string logDirectory = Directory.CreateTempSubdirectory("cluster-local-").FullName;
        var roles = new List<RoleProcess>();
        try
        {
            var coordinator = Start(roles, "coordinator", ["coordinator", "--port", "0", "--http-port", "0"], logDirectory);
            var urls = ParseUrls(await coordinator.WaitReadyAsync(ReadyTimeout, cancellationToken));
            bool withServer = spec.Scheme != "allreduce";
            if (withServer)
            {
                var server = Start(roles, "parameter server", ["ps", "--coordinator", urls["grpc"]], logDirectory);
                await server.WaitReadyAsync(ReadyTimeout, cancellationToken);
            }
            int threads = Math.Max(1, Environment.ProcessorCount / spec.Workers);
            for (int i = 0; i < spec.Workers; i++)
                Start(roles, $"worker {i}", ["worker", "--coordinator", urls["grpc"], "--threads", threads.ToString()], logDirectory);
            console.MarkupLineInterpolated(
                $"Local cluster: coordinator {urls["grpc"]} (API {urls["http"]}), {(withServer ? "1 parameter server" : "ring all-reduce")}, {spec.Workers} worker(s) with {threads} thread(s) each; logs in {logDirectory}");

            using var api = new CoordinatorApi(urls["http"], TimeSpan.FromSeconds(30));
            var job = await api.SubmitAsync(spec, cancellationToken);
            return await new JobWatcher(api, console, roles).WatchAsync(job.Id, cancellationToken);
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

    /// <summary>Rejects a bad job before any process starts.</summary>
    private static void Check(JobSpecification spec)
    {
        var errors = spec.Validate();
        if (errors.Count > 0) throw new CliException(string.Join(Environment.NewLine, errors), exitCode: 2);
        try
        {
            DatasetCatalog.Locate(spec.Dataset, spec.DataDir);
        }
        catch (FileNotFoundException e)
        {
            throw new CliException(e.Message, exitCode: 2);
        }
    }

    private static RoleProcess Start(List<RoleProcess> roles, string name, string[] arguments, string logDirectory)
    {
        var role = RoleProcess.Start(name, arguments, Path.Combine(logDirectory, name.Replace(' ', '-') + ".log"));
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
