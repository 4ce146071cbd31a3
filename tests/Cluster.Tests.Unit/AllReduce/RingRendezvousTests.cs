using Cluster.Coordinator.Rendezvous;
using Cluster.Protos;

namespace Cluster.Tests.Unit.AllReduce;

/// <summary>The coordinator's ring formation and re-formation, as a plain class.</summary>
[Trait("Tier", "unit")]
public sealed class RingRendezvousTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task The_first_ring_forms_when_every_rank_joined_in_rank_order()
    {
        var ring = new RingRendezvous("job-1", 3, TimeSpan.FromSeconds(5), TimeProvider.System);
        var joins = new[] { 2, 0, 1 }.Select(rank => ring.JoinAsync(Join(rank, 0, 0), Wait, default)).ToList();

        var replies = await Task.WhenAll(joins);

        foreach (var reply in replies)
        {
            Assert.Equal(1, reply.Generation);
            Assert.Equal([0, 1, 2], reply.Members.Select(m => m.Rank));
            Assert.Equal("http://peer-1", reply.Members[1].PeerAddress);
        }
    }

    [Fact]
    public async Task An_incomplete_first_ring_answers_ask_again()
    {
        var ring = new RingRendezvous("job-1", 2, TimeSpan.FromSeconds(5), TimeProvider.System);
        var reply = await ring.JoinAsync(Join(0, 0, 0), TimeSpan.FromMilliseconds(100), default);
        Assert.Equal(0, reply.Generation);
        Assert.False(reply.Excluded);
    }

    [Fact]
    public async Task A_member_that_does_not_rejoin_within_the_window_is_dropped_and_excluded_later()
    {
        var window = TimeSpan.FromMilliseconds(300);
        var ring = new RingRendezvous("job-1", 3, window, TimeProvider.System);
        await Task.WhenAll(Enumerable.Range(0, 3).Select(rank => ring.JoinAsync(Join(rank, 0, 0), Wait, default)));

        var started = DateTime.UtcNow;
        var rejoins = await Task.WhenAll(ring.JoinAsync(Join(0, 5, 1), Wait, default), ring.JoinAsync(Join(2, 4, 1), Wait, default));

        Assert.True(DateTime.UtcNow - started >= window - TimeSpan.FromMilliseconds(20), "formed before the window ended");
        foreach (var reply in rejoins)
        {
            Assert.Equal(2, reply.Generation);
            Assert.Equal([0, 2], reply.Members.Select(m => m.Rank));
            Assert.Equal([5L, 4L], reply.Members.Select(m => m.CommittedStep));
        }
        Assert.Equal([1], ring.DroppedRanks);
        Assert.Equal(2, ring.LiveCount);
        Assert.True((await ring.JoinAsync(Join(1, 4, 1), Wait, default)).Excluded);
    }

    [Fact]
    public async Task A_re_formation_completes_at_once_when_the_missing_rank_is_declared_dead()
    {
        var ring = new RingRendezvous("job-1", 2, TimeSpan.FromMinutes(5), TimeProvider.System);
        await Task.WhenAll(ring.JoinAsync(Join(0, 0, 0), Wait, default), ring.JoinAsync(Join(1, 0, 0), Wait, default));

        var rejoin = ring.JoinAsync(Join(1, 3, 1), Wait, default);
        ring.Drop(0);
        var reply = await rejoin.WaitAsync(TimeSpan.FromSeconds(5));

        Assert.Equal(2, reply.Generation);
        Assert.Equal([1], reply.Members.Select(m => m.Rank));
    }

    [Fact]
    public async Task A_lost_reply_is_answered_again_with_the_same_ring()
    {
        var ring = new RingRendezvous("job-1", 2, TimeSpan.FromSeconds(5), TimeProvider.System);
        await Task.WhenAll(ring.JoinAsync(Join(0, 0, 0), Wait, default), ring.JoinAsync(Join(1, 0, 0), Wait, default));

        var again = await ring.JoinAsync(Join(1, 0, 0), Wait, default);

        Assert.Equal(1, again.Generation);
        Assert.Equal(2, again.Members.Count);
    }

    [Fact]
    public async Task A_rank_out_of_range_is_refused()
    {
        var ring = new RingRendezvous("job-1", 2, TimeSpan.FromSeconds(5), TimeProvider.System);
        var error = await Assert.ThrowsAsync<ArgumentException>(() => ring.JoinAsync(Join(2, 0, 0), Wait, default));
        Assert.Contains("rank: 2 is out of range", error.Message, StringComparison.Ordinal);
    }

    private static JoinRingRequest Join(int rank, long committedStep, long lastGeneration) => new()
    {
        JobId = "job-1", Rank = rank, PeerAddress = $"http://peer-{rank}", CommittedStep = committedStep, LastGeneration = lastGeneration,
    };
}
