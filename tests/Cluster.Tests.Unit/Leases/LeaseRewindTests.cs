using Cluster.Coordinator.Leases;

namespace Cluster.Tests.Unit.Leases;

/// <summary>
/// <see cref="ShardLeaseTable.Rewind"/>: parameter servers back from a checkpoint at an older
/// version. The lost steps' shards are taken back and trained again on the same batches, the
/// audit stays exact (every sample once per epoch), an ended epoch reopens, ranks that ask for
/// a later step are told to rewind, and an epoch whose counts were released is refused.
/// </summary>
[Trait("Tier", "unit")]
public sealed class LeaseRewindTests
{
    private const int Samples = 48, Slots = 2, BatchSize = 4; // 6 steps an epoch

    /// <summary>BSP with every rank contributing: leases steps [from, to) for each rank, reporting the previous step's ranks.</summary>
    private static Dictionary<(long Step, int Rank), LeaseGrant> Train(ShardLeaseTable table, long from, long to, bool rewoundAtFirst = false)
    {
        var grants = new Dictionary<(long, int), LeaseGrant>();
        for (long step = from; step < to; step++)
            for (int rank = 0; rank < Slots; rank++)
            {
                while (true)
                {
                    bool rewound = rewoundAtFirst && step == from;
                    var applied = step == 0 ? [] : new[] { new AppliedStep(step - 1, [0, 1]) };
                    var grant = table.Lease(rank, rewound ? -1 : table.CurrentEpoch, step, applied, rewound);
                    if (grant.Kind != LeaseKind.EpochDone) { grants[(step, rank)] = grant; break; }
                    // Evaluated; the next epoch at the same step.
                    if (grant.Epoch == 2) { grants[(step, rank)] = grant; break; }
                    var next = table.Lease(rank, grant.Epoch + 1, step, applied);
                    grants[(step, rank)] = next;
                    break;
                }
            }
        return grants;
    }

    private static void AssertExact(EpochAudit audit)
    {
        Assert.Equal((Samples, 0, 0, true), (audit.SamplesTrainedOnce, audit.SamplesNotTrained, audit.SamplesTrainedMoreThanOnce, audit.Complete));
        Assert.Equal(audit.Shards, audit.ShardsAcknowledged);
    }

    [Fact]
    public void Steps_lost_within_an_epoch_are_trained_again_on_the_same_batches_and_the_audit_stays_exact()
    {
        var table = new ShardLeaseTable(Samples, seed: 7, Slots, BatchSize, epochs: 1);
        var before = Train(table, 0, 6);
        Assert.Equal(4, table.SettledThrough); // step 5 settles with the leases of step 6

        // The servers come back at version 3: steps 3 and 4 (applied) and 5 (leased) were lost.
        var first = table.Lease(0, -1, 3, [new AppliedStep(2, [0, 1])], serversRewound: true);
        var audit = Assert.Single(table.Audits());
        Assert.Equal((Samples * 3 / 6, 0), (audit.SamplesTrainedOnce, audit.SamplesTrainedMoreThanOnce));
        Assert.Equal(before[(3, 0)].SampleIndices, first.SampleIndices);
        var again = Train(table, 3, 6, rewoundAtFirst: true);
        for (long step = 3; step < 6; step++)
            for (int rank = 0; rank < Slots; rank++)
                Assert.Equal(before[(step, rank)].SampleIndices, again[(step, rank)].SampleIndices);

        Assert.Equal(LeaseKind.EpochDone, table.Lease(0, 0, 6, [new AppliedStep(5, [0, 1])]).Kind);
        AssertExact(Assert.Single(table.Audits()));
        Assert.Equal(0, table.Audits()[0].ShardsReturned);
    }

    [Fact]
    public void A_rewind_into_an_ended_epoch_reopens_it_and_both_epochs_end_exact()
    {
        var table = new ShardLeaseTable(Samples, seed: 7, Slots, BatchSize, epochs: 2);
        var before = Train(table, 0, 8); // epoch 0 is steps 0-5, epoch 1 starts at step 6
        Assert.Equal(1, table.CurrentEpoch);

        var first = table.Lease(0, -1, 4, [new AppliedStep(3, [0, 1])], serversRewound: true);
        Assert.Equal(0, table.CurrentEpoch);
        Assert.Equal((LeaseKind.Shard, 0), (first.Kind, first.Epoch));
        Assert.Equal(before[(4, 0)].SampleIndices, first.SampleIndices);
        Assert.False(table.Audits()[0].Complete);
        Assert.Equal(0, table.Audits()[1].SamplesTrainedOnce);
        // The same request again (a lost reply) gets the same answer; the rewind is not repeated.
        Assert.Equal(first, table.Lease(0, -1, 4, [new AppliedStep(3, [0, 1])], serversRewound: true));
        // A rank that has not met the restarted servers yet (its last grant is of generation 0) is told to,
        // and its report of lost steps 6 and 7 is not used.
        Assert.Equal(1, first.Generation);
        var told = table.Lease(1, 1, 8, [new AppliedStep(6, [0, 1]), new AppliedStep(7, [0, 1])], generation: 0);
        Assert.Equal((LeaseKind.Rewind, 4L, 0L), (told.Kind, told.Step, told.Generation));
        Assert.Equal(3, table.SettledThrough);

        var again = Train(table, 4, 10, rewoundAtFirst: true);
        for (long step = 6; step < 8; step++)
            Assert.Equal(before[(step, 1)].SampleIndices, again[(step, 1)].SampleIndices);
        Train(table, 10, 12);
        table.Lease(0, 1, 12, [new AppliedStep(11, [0, 1])]);
        Assert.All(table.Audits(), AssertExact);
    }

    [Fact]
    public void A_rewind_to_a_step_not_yet_applied_changes_nothing()
    {
        var table = new ShardLeaseTable(Samples, seed: 7, Slots, BatchSize, epochs: 1);
        Train(table, 0, 3);
        Assert.False(table.Rewind(2));
        Assert.Equal(1, table.SettledThrough);
        // Back at version 3 = every applied step kept: the report settles step 2, nothing is taken back.
        var grant = table.Lease(0, -1, 3, [new AppliedStep(2, [0, 1])], serversRewound: true);
        Assert.Equal(LeaseKind.Shard, grant.Kind);
        Assert.Equal(2, table.SettledThrough);
        Assert.Equal(Samples / 2, table.Audits()[0].SamplesTrainedOnce);
    }

    [Fact]
    public void A_rewind_into_an_epoch_whose_counts_were_released_is_refused_with_the_reason()
    {
        var table = new ShardLeaseTable(Samples, seed: 7, Slots, BatchSize, epochs: 3);
        Train(table, 0, 13); // epoch 2 started at step 12: epoch 0's counts are released
        var refused = Assert.Throws<InvalidOperationException>(() => table.Lease(0, -1, 5, [new AppliedStep(4, [0, 1])], serversRewound: true));
        Assert.Contains("version 5, in an epoch two or more behind", refused.Message);
        Assert.Contains("released", refused.Message);
        // Nothing changed: the job goes on (or fails) from where it was.
        Assert.Equal(11, table.SettledThrough);
    }
}
