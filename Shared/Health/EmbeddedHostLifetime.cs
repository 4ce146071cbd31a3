using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Cluster.Shared.Health;

/// <summary>
/// The lifetime of a web host embedded in a process that owns its signals (the `cluster` CLI,
/// tests). The default console lifetime would catch SIGTERM for itself, stop only this one host
/// and keep the signal from the process: a worker (two embedded hosts) would never hear it, and
/// the orchestrator would wait for its kill timeout. Here SIGTERM reaches the process's own
/// handler, which cancels the role and disposes its hosts; the hosts stop gracefully (in-flight
/// requests finish, streams close) and report not ready from the start of that.
/// </summary>
public sealed class EmbeddedHostLifetime : IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Replaces the console lifetime of a host being built.</summary>
    public static void Use(IServiceCollection services) => services.AddSingleton<IHostLifetime, EmbeddedHostLifetime>();
}
