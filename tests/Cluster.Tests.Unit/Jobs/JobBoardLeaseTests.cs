using Cluster.Coordinator.Api;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Membership;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Shared.Sharding;
using Kind = Cluster.Protos.LeaseShardReply.Types.Kind;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>
/// <see cref="JobBoard"/> with shard leases (scheme "ps"): the static plan as the default
/// hand-out, a lost rank's unapplied shard handed to a survivor, evaluation parts of the live
/// ranks, joining workers, and the audit in the job's API view.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobBoardLeaseTests
{
    private const int Samples = 20;
    private static readonly TimeSpan TestTimeout = TimeSpan.FromSeconds(10);
    private static readonly JobSpecification TwoWorkers = new() { Workers = 2, Epochs = 1, BatchSize = 4, Model = "mlp" };
    private readonly JobBoard _board = new(TimeProvider.System);

    private Task<Assignment?> Poll(WorkerMember worker) => _board.WaitForAssignmentAsync(worker.Id, TimeSpan.FromSeconds(30), CancellationToken.None);

    private async Task<(JobRecord Job, WorkerMember[] Workers)> StartAsync(JobSpecification spec)
    {
        var job = _board.Submit(spec);
        _board.RegisterServer("http://127.0.0.1:5001");
        var workers = Enumerable.Range(0, spec.Workers).Select(i => _board.RegisterWorker($"host-{i}", "cpu", 100 + i)).ToArray();
        await Task.WhenAll(workers.Select(Poll)).WaitAsync(TestTimeout);
        return (job, workers);
    }

    private LeaseShardReply Lease(JobRecord job, int rank, int epoch, long step, params (long Step, int[] Ranks)[] applied)
    {
        var request = new LeaseShardRequest { JobId = job.Id, Rank = rank, Epoch = epoch, Step = step, TrainSampleCount = Samples, Applied = new AppliedSteps() };
        foreach (var (s, ranks) in applied) request.Applied.Steps.Add(new AppliedStep { Step = s, Ranks = { ranks } });
        return _board.Lease(request);
    }

    private void Evaluate(JobRecord job, int rank, int epoch)
    {
        var report = new ReportEvaluationRequest { JobId = job.Id, Rank = rank, Epoch = epoch, ClassCount = 2, LossSum = 1 };
        report.Confusion.AddRange([2, 0, 0, 2]);
        _board.Evaluation(report);
    }

    [Fact]
    public async Task Without_faults_every_rank_leases_its_slice_of_every_global_batch_and_the_audit_is_complete()
    {
        var (job, _) = await StartAsync(TwoWorkers);
        var plan = new EpochPlan(Samples, TwoWorkers.Seed, 0, 2, 4);

        for (long step = 0; step < plan.StepCount; step++)
            for (int rank = 0; rank < 2; rank++)
            {
                var lease = step == 0 ? Lease(job, rank, 0, step) : Lease(job, rank, 0, step, (step - 1, [0, 1]));
                Assert.Equal(Kind.Shard, lease.Kind);
                Assert.Equal(plan.Batch(rank, (int)step).ToArray(), lease.SampleIndices);
            }
        var done = Lease(job, 0, 0, plan.StepCount, (plan.StepCount - 1, [0, 1]));
        Assert.Equal((Kind.EpochDone, 0, 2), (done.Kind, done.EvaluationPart, done.EvaluationParts));
        Assert.Equal((Kind.EpochDone, 1, 2), (Lease(job, 1, 0, plan.StepCount).Kind, Lease(job, 1, 0, plan.StepCount).EvaluationPart, 2));
        Evaluate(job, 0, 0);
        Evaluate(job, 1, 0);

        Assert.Equal(JobState.Succeeded, job.State);
        var audit = Assert.Single(JobView.From(job, DateTimeOffset.UtcNow).Audit!);
        Assert.Equal((Samples, Samples, 0, 0, true), (audit.Samples, audit.SamplesTrainedOnce, audit.SamplesNotTrained, audit.ShardsReturned, audit.Complete));
    }

    [Fact]
    public async Task A_lost_ranks_unapplied_shard_goes_to_a_survivor_and_only_survivors_evaluate()
    {
        var (job, workers) = await StartAsync(TwoWorkers);
        var lost = Lease(job, 1, 0, 0);
        Lease(job, 0, 0, 0);
        await Task.Delay(300);
        _board.Heartbeat(workers[0].Id);

        _board.ExpireWorkers(TimeSpan.FromMilliseconds(200));
        Assert.True(_board.RemovedRanks.TryRead(out var removed));
        Assert.Equal(1, removed.Rank);
        Assert.Equal(JobState.Running, job.State);

        // The server applied step 0 with rank 0 only: rank 1's shard comes back to rank 0 later.
        var trained = new List<int>(Lease(job, 0, 0, 0).SampleIndices);
        var next = Lease(job, 0, 0, 1, (0, [0]));
        long step = 1;
        while (next.Kind == Kind.Shard)
        {
            trained.AddRange(next.SampleIndices);
            step++;
            next = Lease(job, 0, 0, step, (step - 1, [0]));
        }
        Assert.Subset(trained.ToHashSet(), lost.SampleIndices.ToHashSet());
        Assert.Equal(Enumerable.Range(0, Samples), trained.Order());
        Assert.Equal((Kind.EpochDone, 0, 1), (next.Kind, next.EvaluationPart, next.EvaluationParts));
        var refused = Assert.Throws<InvalidOperationException>(() => Lease(job, 1, 0, step));
        Assert.StartsWith("rank: 1 is not a member of the job", refused.Message, StringComparison.Ordinal);
        Evaluate(job, 0, 0);
        Assert.Equal(JobState.Succeeded, job.State);
        Assert.Equal(1, job.Leases!.Audits()[0].ShardsReturned);
    }

    [Fact]
    public async Task A_worker_that_registers_while_a_job_runs_joins_it_up_to_max_workers()
    {
        var (job, _) = await StartAsync(TwoWorkers with { MaxWorkers = 3 });
        var third = _board.RegisterWorker("host-9", "cpu", 109);
        var fourth = _board.RegisterWorker("host-10", "cpu", 110);

        var assignment = await Poll(third).WaitAsync(TestTimeout);
        var none = await _board.WaitForAssignmentAsync(fourth.Id, TimeSpan.FromMilliseconds(200), CancellationToken.None);

        Assert.NotNull(assignment);
        Assert.Equal((job.Id, 2, true), (assignment.JobId, assignment.Rank, assignment.Join));
        Assert.Null(none); // the job is full
        Lease(job, 0, 0, 0);
        Lease(job, 1, 0, 0);
        var joined = Lease(job, 2, -1, 1, (0, [0, 1]));
        Assert.Equal((Kind.Shard, 0), (joined.Kind, joined.Epoch));
    }

    [Fact]
    public async Task A_worker_admitted_as_an_epoch_ends_is_not_counted_on_to_evaluate_it_and_the_job_ends()
    {
        var (job, _) = await StartAsync(TwoWorkers with { MaxWorkers = 3, Epochs = 2 });
        var plan = new EpochPlan(Samples, TwoWorkers.Seed, 0, 2, 4);
        for (long step = 0; step < plan.StepCount; step++)
            for (int rank = 0; rank < 2; rank++)
                Lease(job, rank, 0, step, step == 0 ? [] : [(step - 1, [0, 1])]);
        // Admitted while the epoch's last step is still unsettled: a member, but it has not leased yet.
        var joiner = _board.RegisterWorker("host-9", "cpu", 109);
        Assert.Equal(2, (await Poll(joiner).WaitAsync(TestTimeout))!.Rank);

        long last = plan.StepCount - 1, first = plan.StepCount;
        var ended = new[] { Lease(job, 0, 0, first, (last, [0, 1])), Lease(job, 1, 0, first, (last, [0, 1])) };
        var joined = Lease(job, 2, -1, first, (last, [0, 1]));

        Assert.All(ended, lease => Assert.Equal((Kind.EpochDone, 2), (lease.Kind, lease.EvaluationParts)));
        Assert.Equal((Kind.Shard, 1), (joined.Kind, joined.Epoch));
        Evaluate(job, 0, 0);
        Evaluate(job, 1, 0);
        // Epoch 1 with three ranks, until each is told it is done; each then evaluates its part.
        var done = new Dictionary<int, LeaseShardReply> { [2] = joined };
        for (long step = first; done.Count < 3 || done.Values.Any(l => l.Kind != Kind.EpochDone); step++)
            for (int rank = 0; rank < 3; rank++)
                if (!done.TryGetValue(rank, out var previous) || previous.Kind != Kind.EpochDone)
                    done[rank] = rank == 2 && step == first ? joined : Lease(job, rank, 1, step, step == first ? [(last, [0, 1])] : [(step - 1, [0, 1, 2])]);
        Assert.All(done.Values, lease => Assert.Equal(3, lease.EvaluationParts));
        Assert.Equal(JobState.Running, job.State);
        foreach (int rank in done.Keys) Evaluate(job, rank, 1);
        Assert.Equal(JobState.Succeeded, job.State);
    }

    [Fact]
    public async Task Without_max_workers_a_new_worker_only_replaces_a_lost_one()
    {
        var (job, workers) = await StartAsync(TwoWorkers);
        var spare = _board.RegisterWorker("host-9", "cpu", 109);
        Assert.Null(await _board.WaitForAssignmentAsync(spare.Id, TimeSpan.FromMilliseconds(200), CancellationToken.None));

        await Task.Delay(300);
        _board.Heartbeat(workers[0].Id);
        _board.Heartbeat(spare.Id);
        _board.ExpireWorkers(TimeSpan.FromMilliseconds(200));
        var assignment = await Poll(spare).WaitAsync(TestTimeout);

        Assert.Equal((job.Id, 2, true), (assignment!.JobId, assignment.Rank, assignment.Join));
    }

    [Fact]
    public async Task A_worker_that_leaves_is_removed_at_once_and_the_job_goes_on()
    {
        var (job, workers) = await StartAsync(TwoWorkers);
        Lease(job, 0, 0, 0);
        Lease(job, 1, 0, 0);

        Assert.True(_board.Leave(job.Id, 1));

        Assert.Equal(JobState.Running, job.State);
        Assert.True(_board.RemovedRanks.TryRead(out var removed));
        Assert.Equal((job, 1), removed);
        Assert.Null(_board.Read((_, members) => members.FindWorker(workers[1].Id)!.JobId));
        // Step 0 went on without rank 1: its shard is leased again.
        Assert.Equal(Kind.Shard, Lease(job, 0, 0, 1, (0, [0])).Kind);
        Assert.Equal(1, job.Leases!.Audits()[0].ShardsReturned);
    }

    [Fact]
    public async Task A_report_of_a_step_outside_the_window_before_the_lease_is_refused_naming_the_field()
    {
        var (job, _) = await StartAsync(TwoWorkers);

        var error = Assert.Throws<ArgumentException>(() => Lease(job, 0, 0, 0, (5, [0, 1])));

        Assert.Equal("applied.step: 5; expected -16 to -1 for a lease of step 0", error.Message);
    }
}
