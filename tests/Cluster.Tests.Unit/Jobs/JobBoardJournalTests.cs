using System.Text.Json;
using Cluster.Coordinator.Api;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.State;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Kind = Cluster.Protos.LeaseShardReply.Types.Kind;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>
/// The coordinator's durable state: a board restored from its journal at any point of a job's
/// life, and driven on from there, ends exactly where the uninterrupted board ends (jobs,
/// ranks, leases, audits, progress, results, members); a lease asked again after the restart
/// gets the answer the lost reply carried; the SQLite file round-trips and refuses what it
/// cannot read.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobBoardJournalTests : IDisposable
{
    private static readonly DateTimeOffset Start = new(2026, 11, 27, 12, 0, 0, TimeSpan.Zero);
    private readonly string _folder = Directory.CreateTempSubdirectory("coordinator-state-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task A_board_restored_at_any_point_ends_where_the_uninterrupted_board_ends(int seed)
    {
        var (expected, total, _) = await RunAsync(seed, cutAt: null);
        Assert.True(total > 60, $"only {total} inputs");
        for (int cut = 1; cut < total; cut++)
        {
            var (actual, _, restoredEvents) = await RunAsync(seed, cutAt: cut);
            Assert.True(restoredEvents > 0);
            Assert.True(expected == actual, $"seed {seed}, restored after input {cut} of {total}:\nexpected {expected}\nactual   {actual}");
        }
    }

    [Fact]
    public async Task The_state_file_round_trips_through_a_reopen()
    {
        string path = Path.Combine(_folder, "sub", "coordinator.db");
        var (expected, _, replayed) = await RunAsync(seed: 4, cutAt: 40, statePath: path);
        var (uninterrupted, _, _) = await RunAsync(seed: 4, cutAt: null);
        Assert.Equal(uninterrupted, expected);
        Assert.True(replayed >= 40, $"{replayed} events replayed");
        using var file = CoordinatorStateFile.Open(path);
        var board = new JobBoard(new ManualClock());
        Assert.Equal(file.EventCount, board.Restore(file.ReadEvents()));
        Assert.Equal(expected, View(board));
    }

    [Fact]
    public async Task A_lease_is_kept_without_the_reports_of_steps_already_settled()
    {
        var journal = new MemoryJournal();
        var board = new JobBoard(new ManualClock()) { Journal = journal };
        board.RegisterServer("http://127.0.0.1:5001");
        var workers = Enumerable.Range(0, 2).Select(i => board.RegisterWorker($"host-{i}", "cpu", 100 + i).Id).ToList();
        var polls = workers.Select(w => board.WaitForAssignmentAsync(w, TimeSpan.FromSeconds(30), CancellationToken.None)).ToList();
        string jobId = board.Submit(new JobSpecification { Model = "mlp", Workers = 2, Epochs = 1, BatchSize = 4, TrainLimit = 96 }).Id;
        await Task.WhenAll(polls).WaitAsync(TimeSpan.FromSeconds(10));

        for (long step = 0; step < 6; step++)
            for (int rank = 0; rank < 2; rank++)
            {
                var request = new LeaseShardRequest { JobId = jobId, Rank = rank, Epoch = 0, Step = step, TrainSampleCount = 96, Applied = new AppliedSteps() };
                for (long s = Math.Max(0, step - 4); s < step; s++) request.Applied.Steps.Add(new AppliedStep { Step = s, Ranks = { 0, 1 } });
                Assert.Equal(Kind.Shard, board.Lease(request).Kind);
            }

        // Rank 0 is the first to report step t - 1: that report is kept. The earlier ones, and all of
        // rank 1's (rank 0's request settled them), change nothing when replayed.
        var kept = journal.Events.Select(e => e.Event.Leased).Where(lease => lease is not null).ToList();
        Assert.Equal(12, kept.Count);
        Assert.All(kept, lease => Assert.Equal(lease.Rank == 0 && lease.Step > 0 ? [lease.Step - 1] : [], lease.Applied.Steps.Select(s => s.Step)));
    }

    [Fact]
    public async Task A_progress_report_sent_again_after_a_lost_reply_is_not_counted_twice()
    {
        var board = new JobBoard(new ManualClock());
        board.RegisterServer("http://127.0.0.1:5001");
        string worker = board.RegisterWorker("host", "cpu", 1).Id;
        var poll = board.WaitForAssignmentAsync(worker, TimeSpan.FromSeconds(30), CancellationToken.None);
        var job = board.Submit(new JobSpecification { Model = "mlp", Workers = 1, Epochs = 1, BatchSize = 4 });
        await poll.WaitAsync(TimeSpan.FromSeconds(10));
        var report = new ReportProgressRequest { JobId = job.Id, Rank = 0, Epoch = 0, StepsDone = 5, StepsTotal = 10, LossSum = 40, SampleCount = 20, RejectedGradients = 1 };
        board.Progress(report);
        board.Progress(report);
        board.Progress(new ReportProgressRequest { JobId = job.Id, Rank = 0, Epoch = 0, StepsDone = 10, StepsTotal = 10, LossSum = 10, SampleCount = 20 });
        var live = board.Read((_, _) => job.Live(Start)!.Value);
        Assert.Equal((10, 10), (live.StepsDone, live.StepsTotal));
        Assert.Equal(1, job.RejectedGradients);
        job.RecordEvaluation(0, 0, 2, [1, 0, 0, 1], 1, Start);
        Assert.Equal(50.0 / 40, Assert.Single(job.Results).TrainLoss);
    }

    [Fact]
    public void A_file_that_is_not_a_state_file_is_refused_naming_it()
    {
        string path = Path.Combine(_folder, "garbage.db");
        File.WriteAllText(path, new string('x', 4096));
        var error = Assert.Throws<InvalidDataException>(() => CoordinatorStateFile.Open(path));
        Assert.Contains(path, error.Message);
        Assert.Contains("not a usable SQLite file", error.Message);
        var folder = Assert.Throws<ArgumentException>(() => CoordinatorStateFile.Open(_folder));
        Assert.Contains("is a directory", folder.Message);
    }

    [Fact]
    public void A_state_file_of_a_newer_layout_is_refused()
    {
        string path = Path.Combine(_folder, "newer.db");
        ExecuteOutsideTheCoordinator(path, $"PRAGMA user_version = {CoordinatorStateFile.LayoutVersion + 1}");
        var error = Assert.Throws<InvalidDataException>(() => CoordinatorStateFile.Open(path));
        Assert.Contains($"layout version {CoordinatorStateFile.LayoutVersion + 1}", error.Message);
    }

    [Fact]
    public void A_state_file_whose_events_table_has_an_autoincrement_counter_appends_and_replays_in_order()
    {
        // Files made before seq became the plain rowid keep their AUTOINCREMENT column.
        string path = Path.Combine(_folder, "counter.db");
        ExecuteOutsideTheCoordinator(path, "CREATE TABLE board_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, job_id TEXT, body BLOB NOT NULL)");
        using (var file = CoordinatorStateFile.Open(path))
        {
            var board = new JobBoard(new ManualClock()) { Journal = file };
            board.RegisterServer("http://127.0.0.1:5001");
            board.RegisterServer("http://127.0.0.1:5002");
        }
        using var reopened = CoordinatorStateFile.Open(path);
        var events = reopened.ReadEvents().ToList();
        Assert.Equal([1L, 2L], events.Select(e => e.Sequence));
        Assert.Equal(["http://127.0.0.1:5001", "http://127.0.0.1:5002"], events.Select(e => e.Event.ServerRegistered));
    }

    [Fact]
    public void An_event_body_that_does_not_parse_stops_the_restore_naming_it()
    {
        string path = Path.Combine(_folder, "corrupt.db");
        using (var file = CoordinatorStateFile.Open(path))
        {
            var board = new JobBoard(new ManualClock()) { Journal = file };
            board.RegisterServer("http://127.0.0.1:5001");
        }
        ExecuteOutsideTheCoordinator(path, "UPDATE board_events SET body = x'ffffffff'");
        using var reopened = CoordinatorStateFile.Open(path);
        var error = Assert.Throws<InvalidDataException>(() => new JobBoard(new ManualClock()).Restore(reopened.ReadEvents()));
        Assert.Contains("event 1 (ServerRegistered): body does not parse", error.Message);
    }

    /// <summary>Runs one SQL statement on the state file as another program would (the file closed afterwards).</summary>
    private static void ExecuteOutsideTheCoordinator(string path, string sql)
    {
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Pooling=False");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }

    /// <summary>
    /// Drives a board through a seeded life: a "ps" job of 3 ranks over 2 epochs with progress
    /// reports, rank 1 leaving mid-step (its shard goes back to the pool) and a spare worker
    /// joining, evaluations; then an allreduce job, and a queued job cancelled. With
    /// <paramref name="cutAt"/>, the board is replaced after that many inputs by one restored
    /// from the journal, the last lease is asked again (its reply "was lost") and must get the
    /// same answer, and the drive goes on against the restored board.
    /// </summary>
    private static async Task<(string View, int Inputs, int Restored)> RunAsync(int seed, int? cutAt, string? statePath = null)
    {
        var clock = new ManualClock();
        var journal = new MemoryJournal();
        var file = statePath is null ? null : CoordinatorStateFile.Open(statePath);
        var board = new JobBoard(clock) { Journal = (IBoardJournal?)file ?? journal };
        var random = new Random(seed);
        int inputs = 0, restored = 0;
        LeaseShardRequest? lastLease = null;
        LeaseShardReply? lastReply = null;

        async Task Act(Func<JobBoard, Task> action)
        {
            clock.Now = Start + TimeSpan.FromMilliseconds(10 * ++inputs);
            lastLease = null;
            await action(board);
            if (inputs != cutAt) return;
            var events = file is null ? journal.Events : [.. file.ReadEvents()];
            file?.Dispose();
            file = statePath is null ? null : CoordinatorStateFile.Open(statePath);
            board = new JobBoard(clock) { Journal = (IBoardJournal?)file ?? journal };
            restored = board.Restore(events);
            if (lastLease is not null) Assert.Equal(lastReply, board.Lease(lastLease));
        }
        void Do(Action<JobBoard> action) => Act(b => { action(b); return Task.CompletedTask; }).GetAwaiter().GetResult();

        Do(b => b.RegisterServer("http://127.0.0.1:5001"));
        var workers = new List<string>();
        for (int i = 0; i < 4; i++) Do(b => workers.Add(b.RegisterWorker($"host-{workers.Count}", "cpu", 100 + workers.Count).Id));

        var spec = new JobSpecification { Model = "mlp", Workers = 3, Epochs = 2, BatchSize = 4, TrainLimit = 96 };
        string jobId = "";
        await Act(async b =>
        {
            var polls = workers.Take(3).Select(w => b.WaitForAssignmentAsync(w, TimeSpan.FromSeconds(30), CancellationToken.None)).ToList();
            jobId = b.Submit(spec).Id;
            await Task.WhenAll(polls).WaitAsync(TimeSpan.FromSeconds(10));
        });

        var epochOf = new Dictionary<int, int> { [0] = 0, [1] = 0, [2] = 0 };
        var stepsDone = new Dictionary<int, int>();
        var finished = new HashSet<int>();
        int leaveAtStep = random.Next(2, 7);
        var applied = new List<List<int>>(); // the ranks behind each step
        for (long step = 0; epochOf.Keys.Any(r => !finished.Contains(r)); step++)
        {
            var contributors = new List<int>();
            foreach (int rank in epochOf.Keys.Order().Where(r => !finished.Contains(r)).ToList())
            {
                while (true)
                {
                    var request = new LeaseShardRequest { JobId = jobId, Rank = rank, Epoch = epochOf[rank], Step = step, TrainSampleCount = 96, Applied = new AppliedSteps() };
                    // As a worker does: the last few steps, most of them settled already (the state file leaves those out).
                    for (long s = Math.Max(0, step - 4); s < step; s++) request.Applied.Steps.Add(new AppliedStep { Step = s, Ranks = { applied[(int)s] } });
                    LeaseShardReply reply = null!;
                    Do(b => (lastLease, lastReply) = (request, reply = b.Lease(request)));
                    if (reply.Kind is Kind.Shard or Kind.Idle)
                    {
                        if (epochOf[rank] != reply.Epoch) stepsDone[rank] = 0;
                        epochOf[rank] = reply.Epoch;
                        int done = stepsDone[rank] = stepsDone.GetValueOrDefault(rank) + 1;
                        contributors.Add(rank);
                        if (random.NextDouble() < 0.4)
                            Do(b => b.Progress(new ReportProgressRequest
                            {
                                JobId = jobId, Rank = rank, Epoch = reply.Epoch, StepsDone = done, StepsTotal = Math.Max(done, reply.PlannedSteps),
                                LossSum = reply.SampleIndices.Count * (1 + random.NextDouble()), SampleCount = reply.SampleIndices.Count,
                            }));
                        break;
                    }
                    if (reply.Kind == Kind.JobDone) { finished.Add(rank); break; }
                    if (reply.EvaluationPart >= 0)
                    {
                        var evaluation = new ReportEvaluationRequest { JobId = jobId, Rank = rank, Epoch = reply.Epoch, ClassCount = 2, LossSum = 1 + reply.EvaluationPart };
                        evaluation.Confusion.AddRange([3 + random.Next(3), 1, 0, 4]);
                        Do(b => b.Evaluation(evaluation));
                    }
                    if (reply.Epoch == spec.Epochs - 1) { finished.Add(rank); break; }
                    epochOf[rank] = reply.Epoch + 1;
                    stepsDone[rank] = 0;
                }
                if (rank == 1 && step == leaveAtStep)
                {
                    // Rank 1 leaves after leasing (its push of this step never completes); the spare worker takes its place.
                    contributors.Remove(1);
                    finished.Add(1);
                    await Act(async b =>
                    {
                        Assert.True(b.Leave(jobId, 1));
                        var joined = await b.WaitForAssignmentAsync(workers[3], TimeSpan.FromSeconds(30), CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
                        Assert.True(joined is { Join: true, Rank: 3 }, $"spare worker got {joined}");
                    });
                    epochOf[3] = -1;
                }
            }
            applied.Add(contributors);
        }

        // Rank 0's worker asks for work (its part is over); an allreduce job on two workers; a job that waits and is cancelled.
        string ring = "";
        await Act(async b =>
        {
            var polls = new[] { workers[0], workers[2] }.Select(w => b.WaitForAssignmentAsync(w, TimeSpan.FromSeconds(30), CancellationToken.None)).ToList();
            ring = b.Submit(spec with { Scheme = "allreduce", Workers = 2, Epochs = 1 }).Id;
            await Task.WhenAll(polls).WaitAsync(TimeSpan.FromSeconds(10));
        });
        for (int rank = 0; rank < 2; rank++)
        {
            int r = rank;
            Do(b => b.Shard(ring, r, 0, 96));
            Do(b => b.Progress(new ReportProgressRequest { JobId = ring, Rank = r, Epoch = 0, StepsDone = 12, StepsTotal = 12, LossSum = 30 + r, SampleCount = 48 }));
        }
        for (int rank = 0; rank < 2; rank++)
        {
            var evaluation = new ReportEvaluationRequest { JobId = ring, Rank = rank, Epoch = 0, ClassCount = 2, LossSum = 2 };
            evaluation.Confusion.AddRange([5, 0, 1, 4]);
            Do(b => b.Evaluation(evaluation));
        }
        Do(b => Assert.True(b.Cancel(b.Submit(spec with { Workers = 4 }).Id)));

        string view = View(board);
        file?.Dispose();
        return (view, inputs, restored);
    }

    /// <summary>Everything the API shows of jobs and members, less heartbeat times (a restore gives every live worker a fresh one).</summary>
    private static string View(JobBoard board) => board.Read((jobs, members) => JsonSerializer.Serialize(new
    {
        Jobs = jobs.Values.Select(job => JobView.From(job, Start)).ToList(),
        Workers = ClusterView.From(members).Workers.Select(w => w with { LastHeartbeat = default }).ToList(),
        members.Servers,
    }, CoordinatorJson));

    private static readonly JsonSerializerOptions CoordinatorJson = new(JsonSerializerDefaults.Web);

    private sealed class MemoryJournal : IBoardJournal
    {
        private readonly List<(long, BoardEvent)> _events = [];
        public List<(long Sequence, BoardEvent Event)> Events => [.. _events.Select(e => (e.Item1, e.Item2.Clone()))];
        public void Append(BoardEvent boardEvent) => _events.Add((_events.Count + 1, boardEvent.Clone()));
        public void JobChanged(JobRecord job) { }
    }

    private sealed class ManualClock : TimeProvider
    {
        public DateTimeOffset Now { get; set; } = Start;
        public override DateTimeOffset GetUtcNow() => Now;
    }
}
