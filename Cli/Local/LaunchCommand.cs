using System.CommandLine;
using System.Diagnostics;
using Cluster.Cli.Api;
using Cluster.Cli.Commands;
using Cluster.Shared.Security;
using Spectre.Console;

namespace Cluster.Cli.Local;

/// <summary>
/// `cluster launch --workers N -- PROGRAM ARGS`: the torchrun of this cluster for users who keep
/// their own training loop. Starts a coordinator and the parameter servers on loopback, then N
/// copies of the program, each told its place through the environment (CLUSTER_RANK,
/// CLUSTER_WORLD_SIZE, CLUSTER_JOB_ID, CLUSTER_COORDINATOR, CLUSTER_PARAMETER_SERVERS,
/// CLUSTER_SECRET), which Cluster.Sdk.Distributed's DistributedOptimizer reads. Their output is
/// forwarded with a rank prefix; the command exits with the first non-zero exit code (0 when
/// every rank succeeded) and stops every process it started.
/// </summary>
public static class LaunchCommand
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);

    public static Command Create()
    {
        var workers = new Option<int>("--workers") { Description = "Copies of the program (ranks)", DefaultValueFactory = _ => 2 };
        var servers = new Option<int>("--ps") { Description = "Parameter-server shards the model is cut across", DefaultValueFactory = _ => 1 };
        var program = new Argument<string[]>("program") { Description = "The program and its arguments (after --), e.g. -- dotnet MyTraining.dll", Arity = ArgumentArity.OneOrMore };
        var security = new SecurityOptions();
        var command = new Command("launch", "Start a coordinator, parameter servers and N copies of your own training program (which uses Cluster.Sdk.Distributed's DistributedOptimizer)") { workers, servers, program };
        security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            int ranks = parse.GetValue(workers), shards = parse.GetValue(servers);
            if (ranks is < 1 or > Shared.Jobs.JobSpecification.WorkersMax)
                throw new CliException($"workers: {ranks} is out of range; expected 1 to {Shared.Jobs.JobSpecification.WorkersMax}", exitCode: 2);
            if (shards is < 1 or > Shared.Jobs.JobSpecification.ParameterServersMax)
                throw new CliException($"ps: {shards} is out of range; expected 1 to {Shared.Jobs.JobSpecification.ParameterServersMax}", exitCode: 2);
            var secret = security.Read(parse, generateWhenMissing: true).Secret;
            return await RunAsync(AnsiConsole.Console, secret, ranks, shards, parse.GetValue(program)!, cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(IAnsiConsole console, ClusterSecret secret, int ranks, int shards, string[] program, CancellationToken cancellationToken)
    {
        string logDirectory = Directory.CreateTempSubdirectory("cluster-launch-").FullName;
        var environment = new Dictionary<string, string> { [ClusterSecret.EnvironmentVariable] = secret.Value };
        var roles = new List<RoleProcess>();
        var children = new List<Process>();
        try
        {
            var coordinator = RoleProcess.Start("coordinator", ["coordinator", "--port", "0", "--http-port", "0"], Path.Combine(logDirectory, "coordinator.log"), environment);
            roles.Add(coordinator);
            string coordinatorUrl = LocalCluster.ParseUrls(await coordinator.WaitReadyAsync(ReadyTimeout, cancellationToken))["grpc"];
            var serverUrls = new List<string>();
            for (int k = 0; k < shards; k++)
            {
                var server = RoleProcess.Start($"parameter server {k}", ["ps", "--coordinator", coordinatorUrl], Path.Combine(logDirectory, $"parameter-server-{k}.log"), environment);
                roles.Add(server);
                serverUrls.Add(LocalCluster.ParseUrls(await server.WaitReadyAsync(ReadyTimeout, cancellationToken))["grpc"]);
            }
            string jobId = $"launch-{Guid.NewGuid():N}"[..19];
            console.MarkupLineInterpolated($"Launch: coordinator {coordinatorUrl}, parameter server(s) {string.Join(", ", serverUrls)}, {ranks} rank(s) of job {jobId}; logs in {logDirectory}");
            int threads = Math.Max(1, Environment.ProcessorCount / ranks);
            for (int rank = 0; rank < ranks; rank++)
            {
                var start = new ProcessStartInfo(program[0]) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (string argument in program[1..]) start.ArgumentList.Add(argument);
                foreach (var (key, value) in environment) start.Environment[key] = value;
                start.Environment["CLUSTER_RANK"] = rank.ToString();
                start.Environment["CLUSTER_WORLD_SIZE"] = ranks.ToString();
                start.Environment["CLUSTER_JOB_ID"] = jobId;
                start.Environment["CLUSTER_COORDINATOR"] = coordinatorUrl;
                start.Environment["CLUSTER_PARAMETER_SERVERS"] = string.Join(',', serverUrls);
                start.Environment["CLUSTER_THREADS"] = threads.ToString();
                children.Add(StartRank(start, rank));
            }
            int exitCode = 0;
            foreach (var child in children)
            {
                await child.WaitForExitAsync(cancellationToken);
                if (child.ExitCode != 0 && exitCode == 0) exitCode = child.ExitCode;
            }
            console.MarkupLineInterpolated($"Launch: {ranks} rank(s) ended, exit code {exitCode}");
            return exitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CliException($"program: '{program[0]}' could not be started ({e.Message}); expected an executable on PATH or a path", exitCode: 2);
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(e.Message, exitCode: 1);
        }
        finally
        {
            foreach (var child in children)
            {
                if (!child.HasExited) child.Kill(entireProcessTree: true);
                child.Dispose();
            }
            foreach (var role in roles) await role.DisposeAsync();
        }
    }

    private static Process StartRank(ProcessStartInfo start, int rank)
    {
        var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) Console.Out.WriteLine($"[rank {rank}] {e.Data}"); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"[rank {rank}] {e.Data}"); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }
}
