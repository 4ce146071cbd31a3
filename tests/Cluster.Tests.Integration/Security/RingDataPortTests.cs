using System.Net.Sockets;
using Cluster.Protos;
using Cluster.Shared.Security;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.AllReduce;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// The ring data port (raw TCP between all-reduce neighbours) is closed like every gRPC method:
/// a connection that does not prove the cluster secret never reaches the ring, and a member
/// never trusts a port that cannot prove it either.
/// </summary>
[Trait("Tier", "integration")]
public sealed class RingDataPortTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private static readonly RingHello Hello = new() { JobId = "job-1", Generation = 1, FromRank = 1 };

    [Fact]
    public async Task A_connection_with_a_wrong_secret_is_refused_with_a_reason_and_never_handed_to_the_ring()
    {
        await using var peer = await PeerHost.StartAsync("127.0.0.1", 0, null, TestSecurity.Loopback, CancellationToken.None);
        await using var stream = await ConnectAsync(peer.Data.Address);
        var wrong = ClusterSecret.Generate();
        var error = await Assert.ThrowsAsync<RingBrokenException>(() => RingSocketProtocol.ConnectAsync(stream, wrong, Hello, CancellationToken.None));
        Assert.Contains("refused this member: the cluster secret presented is wrong", error.Message, StringComparison.Ordinal);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            peer.Data.AcceptAsync("job-1", 1, fromRank: 1, new CancellationTokenSource(TimeSpan.FromSeconds(2)).Token));
        Assert.Equal(0, peer.Data.Accepted);
    }

    [Fact]
    public async Task Garbage_or_silence_instead_of_the_handshake_closes_the_connection()
    {
        await using var peer = await PeerHost.StartAsync("127.0.0.1", 0, null, TestSecurity.Loopback, CancellationToken.None);
        await using (var garbage = await ConnectAsync(peer.Data.Address))
        {
            await garbage.WriteAsync(new byte[4096].Select((_, i) => (byte)(i * 31)).ToArray());
            Assert.Equal(0, await DataPortProbe.BytesAfterGreetingAsync(garbage, Timeout));
        }
        // A length prefix claiming more than any hello may hold is refused before anything is allocated.
        await using (var huge = await ConnectAsync(peer.Data.Address))
        {
            await huge.ReadExactlyAsync(new byte[DataPortProbe.GreetingBytes]);
            await huge.WriteAsync(new byte[64]);
            await huge.WriteAsync(BitConverter.GetBytes(int.MaxValue));
            Assert.Equal(0, await DataPortProbe.BytesAfterGreetingAsync(huge, Timeout));
        }
        Assert.Equal(0, peer.Data.Accepted);
    }

    [Fact]
    public async Task The_right_secret_hands_the_connection_to_the_ring_and_a_port_that_cannot_prove_the_secret_is_not_trusted()
    {
        await using var peer = await PeerHost.StartAsync("127.0.0.1", 0, null, TestSecurity.Loopback, CancellationToken.None);
        await using var stream = await ConnectAsync(peer.Data.Address);
        await RingSocketProtocol.ConnectAsync(stream, TestSecurity.Secret, Hello, CancellationToken.None);
        await using var accepted = await peer.Data.AcceptAsync("job-1", 1, fromRank: 1, new CancellationTokenSource(Timeout).Token);
        Assert.Equal(1, peer.Data.Accepted);

        // A peer holding another secret: the member refuses it (its proof does not match).
        var otherSecurity = new ClusterSecurity { Secret = ClusterSecret.Generate() };
        await using var impostor = await PeerHost.StartAsync("127.0.0.1", 0, null, otherSecurity, CancellationToken.None);
        await using var toImpostor = await ConnectAsync(impostor.Data.Address);
        var error = await Assert.ThrowsAsync<RingBrokenException>(() => RingSocketProtocol.ConnectAsync(toImpostor, TestSecurity.Secret, Hello, CancellationToken.None));
        Assert.Contains("the cluster secret presented is wrong", error.Message, StringComparison.Ordinal);
    }

    private static async Task<NetworkStream> ConnectAsync(string address)
    {
        var uri = new Uri(address);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(uri.Host, uri.Port);
        return new NetworkStream(socket, ownsSocket: true);
    }
}
