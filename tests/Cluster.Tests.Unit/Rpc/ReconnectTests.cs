using Cluster.Shared.Rpc;
using Grpc.Core;

namespace Cluster.Tests.Unit.Rpc;

/// <summary><see cref="Reconnect"/>: waits that double up to a cap, and retries until the peer answers or the deadline passes.</summary>
[Trait("Tier", "unit")]
public sealed class ReconnectTests
{
    [Fact]
    public void The_wait_doubles_from_250_ms_up_to_2_s()
    {
        Assert.Equal([250, 500, 1000, 2000, 2000, 2000], Enumerable.Range(0, 6).Select(a => Reconnect.Backoff(a).TotalMilliseconds));
        Assert.Equal(2000, Reconnect.Backoff(int.MaxValue).TotalMilliseconds);
    }

    [Fact]
    public async Task A_peer_that_answers_after_three_refusals_is_reached_after_the_backoff_waits()
    {
        int calls = 0;
        var started = System.Diagnostics.Stopwatch.StartNew();

        int answer = await Reconnect.UntilAsync("parameter server", "http://127.0.0.1:9", TimeSpan.FromSeconds(30), _ =>
            ++calls <= 3 ? throw new RpcException(new Status(StatusCode.Unavailable, "connection refused")) : Task.FromResult(42), CancellationToken.None);

        Assert.Equal(42, answer);
        Assert.Equal(4, calls);
        Assert.True(started.Elapsed >= TimeSpan.FromMilliseconds(1700), $"{started.Elapsed.TotalMilliseconds} ms: expected 250 + 500 + 1000 ms of waits");
    }

    [Fact]
    public async Task A_peer_that_never_answers_is_reported_unreachable_naming_it()
    {
        var error = await Assert.ThrowsAsync<PeerUnreachableException>(() => Reconnect.UntilAsync<int>("parameter server", "http://127.0.0.1:9", TimeSpan.FromSeconds(1), _ =>
            throw new RpcException(new Status(StatusCode.Unavailable, "connection refused")), CancellationToken.None));

        Assert.StartsWith("parameter server at http://127.0.0.1:9 is not reachable: no answer within 1 s", error.Message, StringComparison.Ordinal);
    }
}
