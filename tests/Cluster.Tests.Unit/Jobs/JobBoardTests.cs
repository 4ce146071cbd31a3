using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Membership;
using Cluster.Protos;
using Cluster.Shared.Jobs;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>
/// <see cref="JobBoard"/>: FIFO queue, assignment of a job once enough workers long-poll and a
/// parameter server exists, the job's lifecycle through shard/progress/evaluation reports,
/// failure propagation through heartbeats, and expiry of silent workers.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobBoardTests
{
    private const string ServerAddress = "http://127.0.0.1:5001";
    private static readonly TimeSpan LongPoll = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan TestTimeout = TimeSpan.FromSeconds(10);

    private static readonly JobSpecification TwoWorkers = new() { Workers = 2, Epochs = 2, BatchSize = 4, Model = "mlp" };

    private readonly JobBoard _board = new(TimeProvider.System);

    private Task<Assignment?> Poll(WorkerMember worker) => _board.WaitForAssignmentAsync(worker.Id, LongPoll, CancellationToken.None);

    /// <summary>Submits a two-worker job, registers a server and two polling workers; returns them by rank.</summary>
    private async Task<(JobRecord Job, WorkerMember[] Workers)> StartTwoWorkerJob()
    {
        var job = _board.Submit(TwoWorkers);
        _board.RegisterServer(ServerAddress);
        WorkerMember[] workers = [_board.RegisterWorker("host-a", "cpu", 101), _board.RegisterWorker("host-b", "cpu", 102)];
        var assignments = await Task.WhenAll(Poll(workers[0]), Poll(workers[1])).WaitAsync(TestTimeout);
        Assert.All(assignments, a => Assert.Equal(job.Id, a?.JobId));
        return (job, workers);
    }

    /// <summary>Plays both ranks through every epoch of a running job until it succeeds.</summary>
    private void DriveToSuccess(JobRecord job)
    {
        long[][] confusionByRank = [[3, 1, 0, 4], [2, 0, 1, 5]];
        for (int epoch = 0; epoch < job.Spec.Epochs; epoch++)
        {
            for (int rank = 0; rank < 2; rank++)
            {
                var (_, offsets) = _board.Shard(job.Id, rank, epoch, trainSampleCount: 20);
                int steps = offsets.Length - 1;
                _board.Progress(new ReportProgressRequest
                {
                    JobId = job.Id, Rank = rank, Epoch = epoch, StepsDone = steps, StepsTotal = steps, LossSum = 5, SampleCount = 10,
                });
            }
            for (int rank = 0; rank < 2; rank++)
            {
                Assert.Equal(JobState.Running, job.State);
                Assert.Equal(epoch, job.Results.Count);
                var report = new ReportEvaluationRequest { JobId = job.Id, Rank = rank, Epoch = epoch, ClassCount = 2, LossSum = 4 };
                report.Confusion.AddRange(confusionByRank[rank]);
                _board.Evaluation(report);
            }
        }
    }

    [Fact]
    public async Task A_two_worker_job_is_assigned_only_once_two_workers_wait_and_a_server_is_registered()
    {
        var job = _board.Submit(TwoWorkers);
        var first = _board.RegisterWorker("host-a", "cpu", 101);
        var second = _board.RegisterWorker("host-b", "cuda:0", 102);

        var firstPoll = Poll(first);
        Assert.Equal(JobState.Queued, job.State);
        var secondPoll = Poll(second);
        Assert.Equal(JobState.Queued, job.State); // no parameter server yet
        Assert.False(firstPoll.IsCompleted || secondPoll.IsCompleted);

        _board.RegisterServer(ServerAddress);
        var assignments = await Task.WhenAll(firstPoll, secondPoll).WaitAsync(TestTimeout);

        Assert.Equal(JobState.Running, job.State);
        Assert.Equal([0, 1], assignments.Select(a => a!.Rank));
        Assert.All(assignments, a =>
        {
            Assert.Equal(job.Id, a!.JobId);
            Assert.Equal(2, a.WorldSize);
            Assert.Equal([ServerAddress], a.ParameterServers);
            Assert.Equal(TwoWorkers.ToProto(), a.Spec);
        });
        Assert.Equal([first.Id, second.Id], job.Ranks);
    }

    [Fact]
    public async Task A_lone_worker_poll_returns_no_assignment_when_its_wait_runs_out()
    {
        var job = _board.Submit(TwoWorkers);
        _board.RegisterServer(ServerAddress);
        var worker = _board.RegisterWorker("host-a", "cpu", 101);

        var assignment = await _board.WaitForAssignmentAsync(worker.Id, TimeSpan.FromMilliseconds(50), CancellationToken.None)
            .WaitAsync(TestTimeout);

        Assert.Null(assignment);
        Assert.Equal(JobState.Queued, job.State);
        Assert.Empty(job.Ranks);
    }

    [Fact]
    public async Task A_second_job_waits_while_the_workers_are_busy_and_starts_after_the_first_succeeds()
    {
        var (first, workers) = await StartTwoWorkerJob();
        var second = _board.Submit(TwoWorkers with { Seed = 2 });
        Assert.Equal(JobState.Queued, second.State);

        DriveToSuccess(first);

        Assert.Equal(JobState.Succeeded, first.State);
        Assert.Null(first.Error);
        Assert.True(_board.FinishedJobs.TryRead(out var finished));
        Assert.Same(first, finished);
        // Merged confusion [5, 1, 1, 9]: 14 of 16 correct. Train loss 10 / 20, test loss 8 / 16 per epoch.
        Assert.Equal([0, 1], first.Results.Select(r => r.Epoch));
        Assert.All(first.Results, r => Assert.Equal((0.875, 0.5, 0.5), (r.Accuracy, r.TrainLoss, r.TestLoss)));
        Assert.Equal(JobState.Queued, second.State); // nobody asked for work yet

        var assignments = await Task.WhenAll(Poll(workers[0]), Poll(workers[1])).WaitAsync(TestTimeout);

        Assert.Equal(JobState.Running, second.State);
        Assert.All(assignments, a => Assert.Equal(second.Id, a!.JobId));
        Assert.Equal(2L, assignments[0]!.Spec.Seed);
    }

    [Fact]
    public async Task Failing_a_job_tells_every_rank_to_abort_through_its_next_heartbeat()
    {
        var (job, workers) = await StartTwoWorkerJob();

        _board.Fail(job.Id, "rank 0: CUDA out of memory");

        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("rank 0: CUDA out of memory", job.Error);
        Assert.Equal((true, job.Id), _board.Heartbeat(workers[1].Id));
        Assert.Equal((true, (string?)null), _board.Heartbeat(workers[1].Id)); // told once
        Assert.Equal((false, (string?)null), _board.Heartbeat("worker-404"));
        var error = Assert.Throws<InvalidOperationException>(() => _board.Shard(job.Id, 1, 0, 20));
        Assert.Equal($"job {job.Id} is failed: rank 0: CUDA out of memory", error.Message);
    }

    [Fact]
    public async Task Expiring_a_silent_worker_removes_its_rank_and_the_job_goes_on_with_the_others()
    {
        var (job, workers) = await StartTwoWorkerJob();
        await Task.Delay(TimeSpan.FromMilliseconds(400));
        Assert.Equal((true, (string?)null), _board.Heartbeat(workers[1].Id)); // rank 1 is still alive

        _board.ExpireWorkers(TimeSpan.FromMilliseconds(200));

        Assert.Equal(JobState.Running, job.State);
        Assert.Equal([0], job.RemovedRanks);
        Assert.True(_board.RemovedRanks.TryRead(out var removed));
        Assert.Equal((job, 0), removed);
        Assert.Equal((false, (string?)null), _board.Heartbeat(workers[0].Id));
        // A failure the lost rank reports afterwards is not the job's.
        _board.Fail(job.Id, "rank 0: parameter server refused the push", rank: 0);
        Assert.Equal(JobState.Running, job.State);

        await Task.Delay(TimeSpan.FromMilliseconds(400));
        _board.ExpireWorkers(TimeSpan.FromMilliseconds(200));

        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal($"worker {workers[1].Id} (rank 1, host host-b, pid 102) lost: no heartbeat for 0.2 s", job.Error);
    }

    [Fact]
    public async Task Expiring_with_a_zero_timeout_fails_the_running_job()
    {
        var (job, workers) = await StartTwoWorkerJob();
        await Task.Delay(TimeSpan.FromMilliseconds(20));

        _board.ExpireWorkers(TimeSpan.Zero);

        Assert.Equal(JobState.Failed, job.State);
        Assert.Contains(workers.Select(w => w.Id), id => job.Error!.StartsWith($"worker {id} (rank ", StringComparison.Ordinal));
        Assert.EndsWith("lost: no heartbeat for 0 s", job.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void An_invalid_spec_is_rejected_listing_every_error()
    {
        var error = Assert.Throws<JobRejectedException>(() => _board.Submit(new JobSpecification { Model = "resnet9000", Workers = 0 }));

        Assert.Equal(2, error.Errors.Count);
        Assert.StartsWith("model: 'resnet9000'", error.Errors[0], StringComparison.Ordinal);
        Assert.StartsWith("workers: 0", error.Errors[1], StringComparison.Ordinal);
        Assert.Equal(string.Join("; ", error.Errors), error.Message);
        Assert.Equal(0, _board.Read((jobs, _) => jobs.Count));
    }

    [Fact]
    public async Task A_rank_reporting_a_different_train_sample_count_is_rejected_naming_the_field()
    {
        var (job, _) = await StartTwoWorkerJob();
        var (indices, _) = _board.Shard(job.Id, 0, 0, trainSampleCount: 20);
        Assert.Equal(12, indices.Length); // 20 samples, global batch 8: rank 0 gets 4 + 4 + 4

        var error = Assert.Throws<ArgumentException>(() => _board.Shard(job.Id, 1, 0, trainSampleCount: 19));

        Assert.StartsWith("train_sample_count: 19 differs from the 20 other ranks loaded", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Shards_of_both_ranks_cover_the_training_set_once()
    {
        var (job, _) = await StartTwoWorkerJob();

        var rank0 = _board.Shard(job.Id, 0, 1, trainSampleCount: 20).SampleIndices;
        var rank1 = _board.Shard(job.Id, 1, 1, trainSampleCount: 20).SampleIndices;

        Assert.Equal(Enumerable.Range(0, 20), rank0.Concat(rank1).Order());
        Assert.Equal((12, 8), (rank0.Length, rank1.Length));
    }

    [Fact]
    public async Task An_evaluation_for_an_epoch_the_job_does_not_have_is_refused_and_cannot_end_the_job()
    {
        // Regression: reports for epoch 7 of a 2-epoch job once counted as a finished epoch.
        var (job, _) = await StartTwoWorkerJob();
        var report = new ReportEvaluationRequest { JobId = job.Id, Rank = 0, Epoch = 7, ClassCount = 2, LossSum = 1 };
        report.Confusion.AddRange([1, 0, 0, 1]);

        var error = Assert.Throws<ArgumentException>(() => _board.Evaluation(report));

        Assert.StartsWith("epoch: 7 is out of range", error.Message, StringComparison.Ordinal);
        Assert.Equal(JobState.Running, job.State);
    }

    [Fact]
    public void Cancelling_a_queued_job_removes_it_from_the_queue()
    {
        var job = _board.Submit(TwoWorkers);

        Assert.True(_board.Cancel(job.Id));
        Assert.False(_board.Cancel(job.Id));
        Assert.Equal((JobState.Cancelled, "cancelled by the user"), (job.State, job.Error));
        Assert.False(_board.FinishedJobs.TryRead(out _)); // nothing to release on the servers
    }
}
