using System.CommandLine;
using System.Runtime.InteropServices;
using Cluster.Cli.Api;
using Cluster.Cli.Commands;
using Cluster.Shared.Rpc;

// `cluster`: every role of the system and the commands that drive it.
//   cluster                   the main job: `cluster local` with its defaults
//   cluster local             a whole cluster on this machine, one process per role
//   cluster coordinator|ps|worker   one role, for clusters spread over machines
//   cluster submit|status     jobs on a running coordinator
//   cluster sweep             hyperparameter search, one job per trial
//   cluster secret|certs      a cluster secret, development TLS certificates
//   cluster probe URL         a health check (liveness /healthz, readiness /readyz) for containers
var root = new RootCommand("Cluster: distributed data-parallel training for .NET");
var local = JobCommands.Local();
root.Subcommands.Add(local);
root.Subcommands.Add(RoleCommands.Coordinator());
root.Subcommands.Add(RoleCommands.ParameterServer());
root.Subcommands.Add(RoleCommands.Worker());
root.Subcommands.Add(JobCommands.Submit());
root.Subcommands.Add(Cluster.Cli.Local.LaunchCommand.Create());
root.Subcommands.Add(JobCommands.Status());
root.Subcommands.Add(Cluster.Cli.Tuning.SweepCommand.Create());
root.Subcommands.Add(SecurityCommands.Secret());
root.Subcommands.Add(SecurityCommands.Certificates());
root.Subcommands.Add(ProbeCommand.Create());

var parse = root.Parse(args.Length == 0 ? ["local"] : args);
try
{
    // SIGTERM (docker stop, a pod's termination) cancels the command as Ctrl-C does: a role then
    // stops its hosts gracefully (requests in flight finish, streams close) instead of dying mid-call.
    using var terminate = new CancellationTokenSource();
    using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, signal => { signal.Cancel = true; terminate.Cancel(); });
    return await parse.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false }, terminate.Token);
}
catch (CliException e)
{
    await Console.Error.WriteLineAsync($"error: {e.Message}");
    return e.ExitCode;
}
catch (Exception e) when (e is PeerUnreachableException or PeerRefusedException)
{
    await Console.Error.WriteLineAsync($"error: {e.Message}");
    return 1;
}
catch (Exception e) when (e is ArgumentException or FileNotFoundException or InvalidDataException)
{
    await Console.Error.WriteLineAsync($"error: {e.Message}");
    return 2;
}
catch (Grpc.Core.RpcException e)
{
    await Console.Error.WriteLineAsync($"error: a cluster peer answered {e.StatusCode}: {e.Status.Detail}");
    return 1;
}
catch (OperationCanceledException)
{
    await Console.Error.WriteLineAsync("cancelled");
    return 130;
}
