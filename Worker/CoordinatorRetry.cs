using Cluster.Shared.Rpc;
using Grpc.Core;

namespace Cluster.Worker;

/// <summary>
/// Calls to the coordinator that ride out its restart (a coordinator with a state file resumes
/// its jobs): a call that finds it unreachable is tried again with backoff until the worker's
/// coordinator-lost timeout. Every call retried this way is idempotent at the coordinator: a
/// lease asked again gets the same answer, a repeated progress or evaluation report is not
/// counted twice, a shard plan is the same plan.
/// </summary>
internal static class CoordinatorRetry
{
    /// <summary>Makes <paramref name="call"/> (given its deadline) until it answers or the coordinator counts as lost.</summary>
    public static Task<T> CallAsync<T>(WorkerOptions options, Func<DateTime, AsyncUnaryCall<T>> call, CancellationToken cancellationToken) =>
        CallAsync(options, deadline => call(deadline).ResponseAsync, cancellationToken);

    /// <summary>The same for any request that takes a deadline (a message on a stream: <see cref="Training.LeaseStream"/>).</summary>
    public static Task<T> CallAsync<T>(WorkerOptions options, Func<DateTime, Task<T>> call, CancellationToken cancellationToken) =>
        Reconnect.UntilAsync("coordinator", options.CoordinatorUrl, options.CoordinatorLostTimeout, async giveUpAt =>
        {
            var deadline = DateTime.UtcNow + options.CallTimeout;
            return await call(deadline < giveUpAt ? deadline : giveUpAt);
        }, cancellationToken);
}
