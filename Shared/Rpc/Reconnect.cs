using Grpc.Core;

namespace Cluster.Shared.Rpc;

/// <summary>Retries a call to a peer, with exponential backoff, until it answers or a deadline passes.</summary>
public static class Reconnect
{
    /// <summary>First wait between tries; each later one doubles, up to <see cref="RetryDelayMax"/>.</summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(250);
    public static readonly TimeSpan RetryDelayMax = TimeSpan.FromSeconds(2);

    /// <summary>The wait before try <paramref name="attempt"/> + 1 (0-based): 250 ms, 500 ms, 1 s, 2 s, 2 s...</summary>
    public static TimeSpan Backoff(int attempt) =>
        TimeSpan.FromTicks(Math.Min(RetryDelayMax.Ticks, RetryDelay.Ticks << Math.Min(attempt, 16)));

    /// <summary>
    /// Calls <paramref name="call"/> (given the overall deadline) until it succeeds; transport
    /// failures are retried until <paramref name="timeout"/>, then reported naming
    /// <paramref name="peer"/> and <paramref name="address"/>.
    /// </summary>
    public static async Task<T> UntilAsync<T>(string peer, string address, TimeSpan timeout, Func<DateTime, Task<T>> call, CancellationToken cancellationToken)
    {
        var giveUpAt = DateTime.UtcNow + timeout;
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return await call(giveUpAt);
            }
            catch (RpcException e) when (IsTlsRefusal(e))
            {
                throw new PeerRefusedException(
                    $"{peer} at {address} refused the connection ({e.Status.Detail}); with TLS, check that this member's certificate " +
                    "is signed by the cluster CA and that it trusts that CA (--tls-dir)", e);
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
            {
                var delay = Backoff(attempt);
                if (DateTime.UtcNow + delay >= giveUpAt)
                    throw new PeerUnreachableException(
                        $"{peer} at {address} is not reachable: no answer within {timeout.TotalSeconds:0.#} s ({e.Status.Detail})", e);
                await Task.Delay(delay, cancellationToken);
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unauthenticated)
            {
                throw new PeerRefusedException($"{peer} at {address} refused this member: {e.Status.Detail}; give the cluster's secret", e);
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Internal && e.Status.Detail.StartsWith("Error starting gRPC call", StringComparison.Ordinal))
            {
                throw new PeerRefusedException(
                    $"{peer} at {address} refused the connection ({e.Status.Detail}); with TLS, check that this member's certificate " +
                    "is signed by the cluster CA and that it trusts that CA (--tls-dir)", e);
            }
        }
    }

    /// <summary>
    /// A TLS handshake that failed, or a connection the server dropped right after it (how a
    /// refused client certificate looks under TLS 1.3): a configuration error, not worth retrying.
    /// </summary>
    private static bool IsTlsRefusal(RpcException e)
    {
        for (var inner = e.Status.DebugException; inner is not null; inner = inner.InnerException)
            if (inner is System.Security.Authentication.AuthenticationException) return true;
        return e.Status.Detail.Contains("did not complete the HTTP/2 handshake", StringComparison.Ordinal)
            || e.Status.Detail.Contains("SSL connection could not be established", StringComparison.Ordinal);
    }
}

/// <summary>A peer of the cluster answered but refused this member (wrong secret, certificate not of the cluster CA).</summary>
public sealed class PeerRefusedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A peer of the cluster could not be reached before its deadline.</summary>
public sealed class PeerUnreachableException(string message, Exception? inner = null) : Exception(message, inner);
