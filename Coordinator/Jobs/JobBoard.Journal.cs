using Cluster.Coordinator.Membership;
using Cluster.Protos;
using Cluster.Shared.Jobs;

namespace Cluster.Coordinator.Jobs;

/// <summary>Where the board records the inputs it applies (the coordinator's SQLite state file).</summary>
public interface IBoardJournal
{
    /// <summary>Records one input, in the order the board applies them; throws when it cannot be made durable.</summary>
    void Append(BoardEvent boardEvent);

    /// <summary>A job was submitted, started, ended or finished an epoch: a readable summary for operators (never read back).</summary>
    void JobChanged(JobRecord job);
}

/// <summary>
/// Durable state by replay. Every public method that changes the board records its input in
/// the <see cref="Journal"/> before applying it (write-ahead, under the board's lock, so the
/// order is the order of application); decisions that depend on what is not recorded (which
/// workers were waiting, which were silent) are recorded as their outcome: a job started on
/// these workers, a rank joined, a worker expired. The board and the lease table are
/// deterministic, so replaying the inputs through the same code, each at its recorded clock,
/// rebuilds the same jobs, ranks, epoch plans, leases, audits, progress and results. An input
/// the live board refused (a stale lease, a call for a finished job) is refused again by the
/// replay at the same point, with the same effect: none.
/// </summary>
public sealed partial class JobBoard
{
    private DateTimeOffset? _replayAt;

    /// <summary>Records inputs for <see cref="Restore"/>; null keeps the board in memory only.</summary>
    public IBoardJournal? Journal { get; init; }

    private bool Replaying => _replayAt is not null;

    /// <summary>Whether <see cref="Record"/> keeps what it is given (a journal, and not replaying).</summary>
    private bool Recording => !Replaying && Journal is not null;

    /// <summary>The board's clock: the recorded time of the input being replayed, or now.</summary>
    private DateTimeOffset Now => _replayAt ?? time.GetUtcNow();

    private void Record(BoardEvent boardEvent)
    {
        if (!Recording) return;
        boardEvent.AtUtcTicks = Now.UtcTicks;
        Journal!.Append(boardEvent);
    }

    private void JobChanged(JobRecord job)
    {
        if (!Replaying) Journal?.JobChanged(job);
    }

    /// <summary>
    /// Replays recorded inputs into this (new, empty) board; returns how many. Afterwards every
    /// worker still alive gets a fresh heartbeat timeout, and the parameter servers of running
    /// jobs are told again which ranks those jobs lost (the message may have died with the
    /// previous process; servers ignore a rank they already removed).
    /// </summary>
    public int Restore(IEnumerable<(long Sequence, BoardEvent Event)> events)
    {
        lock (_gate)
        {
            if (_jobs.Count > 0 || _members.Workers.Count > 0 || _members.Servers.Count > 0)
                throw new InvalidOperationException("the board already has state; restore into a new board");
            int count = 0;
            try
            {
                foreach (var (sequence, boardEvent) in events)
                {
                    _replayAt = new DateTimeOffset(boardEvent.AtUtcTicks, TimeSpan.Zero);
                    try { Apply(boardEvent); }
                    catch (Exception e) when (e is ArgumentException or InvalidOperationException && !IsBoardBug(e))
                    {
                        // The live board refused this input the same way: nothing changed then either.
                    }
                    catch (Exception e)
                    {
                        throw new InvalidDataException($"event {sequence} ({boardEvent.KindCase}): cannot be replayed: {e.Message}", e);
                    }
                    count++;
                }
            }
            finally
            {
                _replayAt = null;
            }
            var now = time.GetUtcNow();
            foreach (var worker in _members.Workers.Where(w => w.Alive)) worker.LastHeartbeat = now;
            foreach (var job in _jobs.Values.Where(j => j.State == JobState.Running))
                foreach (int rank in job.RemovedRanks.Order())
                    _removedRanks.Writer.TryWrite((job, rank));
            return count;
        }
    }

    /// <summary>Errors that mean the events do not describe this board (not a refusal the live board also made).</summary>
    private static bool IsBoardBug(Exception e) => e is KeyNotFoundException or ArgumentOutOfRangeException or IndexOutOfRangeException;

    private void Apply(BoardEvent boardEvent)
    {
        switch (boardEvent.KindCase)
        {
            case BoardEvent.KindOneofCase.Submitted:
                AddJob(JobSpecification.FromProto(boardEvent.Submitted.Spec, boardEvent.Submitted.Workers));
                break;
            case BoardEvent.KindOneofCase.WorkerRegistered:
                var registered = boardEvent.WorkerRegistered;
                _members.AddWorker(registered.Host, registered.Device, registered.ProcessId, Now);
                break;
            case BoardEvent.KindOneofCase.ServerRegistered:
                AddServer(boardEvent.ServerRegistered);
                break;
            case BoardEvent.KindOneofCase.JobStarted:
                var started = boardEvent.JobStarted;
                Start(KnownJob(started.JobId), [.. started.WorkerIds.Select(KnownWorker)]);
                break;
            case BoardEvent.KindOneofCase.RankJoined:
                Join(KnownJob(boardEvent.RankJoined.JobId), KnownWorker(boardEvent.RankJoined.WorkerId));
                break;
            case BoardEvent.KindOneofCase.WorkerReleased:
                KnownWorker(boardEvent.WorkerReleased).JobId = null;
                break;
            case BoardEvent.KindOneofCase.ShardPlanned:
                var shard = boardEvent.ShardPlanned;
                Shard(shard.JobId, shard.Rank, shard.Epoch, shard.TrainSampleCount);
                break;
            case BoardEvent.KindOneofCase.Leased:
                Lease(boardEvent.Leased);
                break;
            case BoardEvent.KindOneofCase.Progress:
                Progress(boardEvent.Progress);
                break;
            case BoardEvent.KindOneofCase.Evaluation:
                Evaluation(boardEvent.Evaluation);
                break;
            case BoardEvent.KindOneofCase.Failed:
                var failed = boardEvent.Failed;
                Fail(failed.JobId, failed.Message, failed.Rank < 0 ? null : failed.Rank);
                break;
            case BoardEvent.KindOneofCase.Cancelled:
                Cancel(boardEvent.Cancelled);
                break;
            case BoardEvent.KindOneofCase.WorkerExpired:
                Expire(KnownWorker(boardEvent.WorkerExpired.WorkerId), TimeSpan.FromMilliseconds(boardEvent.WorkerExpired.HeartbeatTimeoutMillis));
                break;
            case BoardEvent.KindOneofCase.Left:
                Leave(boardEvent.Left.JobId, boardEvent.Left.Rank);
                break;
            default:
                throw new InvalidDataException($"kind: {boardEvent.KindCase} is not an event this coordinator knows; expected one written by this version");
        }
    }

    private JobRecord KnownJob(string jobId) =>
        _jobs.TryGetValue(jobId, out var job) ? job : throw new InvalidDataException($"job_id: '{jobId}' was never submitted");

    private WorkerMember KnownWorker(string workerId) =>
        _members.FindWorker(workerId) ?? throw new InvalidDataException($"worker_id: '{workerId}' was never registered");
}
