using System.Threading.Channels;
using Cluster.Coordinator.Membership;
using Cluster.Protos;
using Cluster.Shared.Jobs;

namespace Cluster.Coordinator.Jobs;

/// <summary>
/// The coordinator's state machine: members, the FIFO job queue, assignment of queued jobs to
/// idle workers, and each running job's lifecycle. One lock guards everything; nothing here
/// is on the training hot path. Plain class: tested without a network. With a
/// <see cref="Journal"/>, every input that changes the board is recorded before it is applied,
/// and <see cref="Restore"/> replays them (JobBoard.Journal.cs).
/// </summary>
public sealed partial class JobBoard(TimeProvider time)
{
    private readonly object _gate = new();
    private readonly MemberRegistry _members = new();
    private readonly Dictionary<string, JobRecord> _jobs = [];
    private readonly LinkedList<JobRecord> _queue = new();
    private readonly List<(WorkerMember Worker, TaskCompletionSource<Assignment> Reply)> _waiting = [];
    private readonly Dictionary<string, string> _pendingAborts = [];
    private readonly Channel<JobRecord> _finished = Channel.CreateUnbounded<JobRecord>();
    private int _nextJob;
    private int _nextServer;

    /// <summary>Jobs that just ended, for releasing their parameter-server state.</summary>
    public ChannelReader<JobRecord> FinishedJobs => _finished.Reader;

    /// <summary>Queues a job; refuses it when <paramref name="queuedMax"/> jobs are already waiting.</summary>
    public JobRecord Submit(JobSpecification spec, int queuedMax = int.MaxValue)
    {
        var errors = spec.Validate();
        if (errors.Count > 0) throw new JobRejectedException(errors);
        lock (_gate)
        {
            if (_queue.Count >= queuedMax)
                throw new QueueFullException($"queue: {_queue.Count} jobs are already waiting (the limit); submit again when some have started");
            Record(new BoardEvent { Submitted = new JobSubmitted { Spec = spec.ToProto(), Workers = spec.Workers } });
            return AddJob(spec);
        }
    }

    private JobRecord AddJob(JobSpecification spec)
    {
        var job = new JobRecord($"job-{++_nextJob}", spec, Now);
        _jobs.Add(job.Id, job);
        _queue.AddLast(job);
        JobChanged(job);
        Schedule();
        return job;
    }

    /// <summary>Registers a worker; refuses it when <paramref name="liveMax"/> live workers are registered.</summary>
    public WorkerMember RegisterWorker(string host, string device, int processId, int liveMax = int.MaxValue)
    {
        lock (_gate)
        {
            if (_members.Workers.Count(w => w.Alive) >= liveMax)
                throw new QueueFullException($"workers: {liveMax} live workers are registered (the limit); this worker is refused");
            Record(new BoardEvent { WorkerRegistered = new RegisterWorkerRequest { Host = host, Device = device, ProcessId = processId } });
            return _members.AddWorker(host, device, processId, Now);
        }
    }

    public ParameterServerMember RegisterServer(string address)
    {
        lock (_gate)
        {
            Record(new BoardEvent { ServerRegistered = address });
            return AddServer(address);
        }
    }

    private ParameterServerMember AddServer(string address)
    {
        var server = _members.AddServer(address, Now);
        Schedule();
        return server;
    }

    /// <summary>Records a heartbeat; returns whether the worker is known and a job it must abort.</summary>
    public (bool Known, string? AbortJobId) Heartbeat(string workerId)
    {
        lock (_gate)
        {
            var worker = _members.FindWorker(workerId);
            if (worker is null || !worker.Alive) return (false, null);
            worker.LastHeartbeat = Now;
            return _pendingAborts.Remove(workerId, out string? abort) ? (true, abort) : (true, null);
        }
    }

    /// <summary>Waits up to <paramref name="wait"/> for this worker to be given a job.</summary>
    public async Task<Assignment?> WaitForAssignmentAsync(string workerId, TimeSpan wait, CancellationToken cancellationToken)
    {
        TaskCompletionSource<Assignment> reply;
        lock (_gate)
        {
            var worker = _members.FindWorker(workerId) ?? throw new ArgumentException($"worker_id: '{workerId}' is not registered");
            // Asking for work means the worker is done with its previous job (its part of it).
            if (worker.JobId is not null)
            {
                Record(new BoardEvent { WorkerReleased = workerId });
                worker.JobId = null;
            }
            _waiting.RemoveAll(w => w.Worker == worker);
            reply = new TaskCompletionSource<Assignment>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiting.Add((worker, reply));
            Schedule();
        }
        try { await Task.WhenAny(reply.Task, Task.Delay(wait, time, cancellationToken)); }
        finally
        {
            lock (_gate) _waiting.RemoveAll(w => w.Reply == reply);
        }
        return reply.Task.IsCompletedSuccessfully ? reply.Task.Result : null;
    }

    public (int[] SampleIndices, int[] StepOffsets) Shard(string jobId, int rank, int epoch, int trainSampleCount)
    {
        lock (_gate)
        {
            Record(new BoardEvent { ShardPlanned = new GetShardRequest { JobId = jobId, Rank = rank, Epoch = epoch, TrainSampleCount = trainSampleCount } });
            var job = RunningJob(jobId, rank);
            return job.Ring is null
                ? job.Plan(epoch, trainSampleCount, Now).Shard(rank)
                : job.RingShard(rank, epoch, trainSampleCount, Now);
        }
    }

    public void Progress(ReportProgressRequest report)
    {
        lock (_gate)
        {
            Record(new BoardEvent { Progress = report });
            var job = RunningJob(report.JobId, report.Rank);
            if (job.RecordProgress(report.Rank, report.Epoch, report.StepsDone, report.StepsTotal, report.LossSum, report.SampleCount, Now))
                job.RecordRejectedGradients(report.RejectedGradients);
        }
    }

    public void Evaluation(ReportEvaluationRequest report)
    {
        lock (_gate)
        {
            Record(new BoardEvent { Evaluation = report });
            var job = RunningJob(report.JobId, report.Rank);
            if (IsRemoved(job, report.Rank)) return; // its part was given up when it was removed
            bool epochDone = job.RecordEvaluation(report.Rank, report.Epoch, report.ClassCount, report.Confusion, report.LossSum, Now);
            if (!epochDone) return;
            JobChanged(job);
            if (job.Results.Count == job.Spec.Epochs) End(job, JobState.Succeeded, null);
        }
    }

    /// <summary>Fails a job on a rank's report; a rank the job already let go (lost or left) fails nothing.</summary>
    public void Fail(string jobId, string message, int? rank = null)
    {
        lock (_gate)
        {
            if (!_jobs.TryGetValue(jobId, out var job) || job.IsFinished || (rank is { } r && IsRemoved(job, r))) return;
            Record(new BoardEvent { Failed = new JobFailed { JobId = jobId, Message = message, Rank = rank ?? -1 } });
            End(job, JobState.Failed, message);
        }
    }

    /// <summary>Cancels a queued or running job; returns false when it is unknown or already over.</summary>
    public bool Cancel(string jobId)
    {
        lock (_gate)
        {
            if (!_jobs.TryGetValue(jobId, out var job) || job.IsFinished) return false;
            Record(new BoardEvent { Cancelled = jobId });
            End(job, JobState.Cancelled, "cancelled by the user");
            return true;
        }
    }

    /// <summary>
    /// Declares silent workers dead: a "ps" job goes on without them (their leases return to
    /// the pool), a ring drops them; a job fails when it has no worker left.
    /// </summary>
    public void ExpireWorkers(TimeSpan heartbeatTimeout)
    {
        lock (_gate)
        {
            foreach (var worker in _members.SilentWorkers(Now, heartbeatTimeout))
            {
                Record(new BoardEvent { WorkerExpired = new WorkerExpired { WorkerId = worker.Id, HeartbeatTimeoutMillis = (long)heartbeatTimeout.TotalMilliseconds } });
                Expire(worker, heartbeatTimeout);
            }
        }
    }

    private void Expire(WorkerMember worker, TimeSpan heartbeatTimeout)
    {
        worker.Alive = false;
        _waiting.RemoveAll(w => w.Worker == worker);
        if (worker.JobId is null || !_jobs.TryGetValue(worker.JobId, out var job) || job.IsFinished) return;
        string lost = $"worker {worker.Id} (rank {job.Ranks.IndexOf(worker.Id)}, host {worker.Host}, pid {worker.ProcessId}) lost: no heartbeat for {heartbeatTimeout.TotalSeconds:0.#} s";
        if (!TryDropFromRing(job, worker.Id) && !TryRemoveFromPs(job, worker, lost)) End(job, JobState.Failed, lost);
    }

    public T Read<T>(Func<IReadOnlyDictionary<string, JobRecord>, MemberRegistry, T> view)
    {
        lock (_gate) return view(_jobs, _members);
    }

    private void Schedule()
    {
        while (_queue.First is { } head && (_members.Servers.Count >= head.Value.Spec.ParameterServers || head.Value.Spec.Scheme == "allreduce"))
        {
            var job = head.Value;
            var idle = _waiting.Where(w => w.Worker.Alive && w.Worker.JobId is null).Take(job.Spec.Workers).ToList();
            if (idle.Count < job.Spec.Workers) return;
            var started = new JobStarted { JobId = job.Id };
            started.WorkerIds.AddRange(idle.Select(w => w.Worker.Id));
            Record(new BoardEvent { JobStarted = started });
            Start(job, [.. idle.Select(w => w.Worker)]);
            for (int rank = 0; rank < idle.Count; rank++)
            {
                var (worker, reply) = idle[rank];
                _waiting.RemoveAll(w => w.Worker == worker);
                var assignment = new Assignment { JobId = job.Id, Rank = rank, WorldSize = idle.Count, Spec = job.Spec.ToProto() };
                assignment.ParameterServers.AddRange(job.ParameterServers);
                reply.TrySetResult(assignment);
            }
        }
        AdmitJoiners();
    }

    /// <summary>Starts a queued job on <paramref name="workers"/> (rank r is workers[r]).</summary>
    private void Start(JobRecord job, IReadOnlyList<WorkerMember> workers)
    {
        _queue.Remove(job);
        job.State = JobState.Running;
        job.StartedAt = Now;
        if (job.Spec.Scheme == "allreduce")
        {
            job.Ring = new(job.Id, workers.Count, RingJoinWindow, time);
        }
        else
        {
            // Spread jobs over the servers: each job starts where the previous one ended.
            for (int k = 0; k < job.Spec.ParameterServers; k++)
                job.ParameterServers.Add(_members.Servers[(_nextServer + k) % _members.Servers.Count].Address);
            _nextServer = (_nextServer + job.Spec.ParameterServers) % _members.Servers.Count;
        }
        foreach (var worker in workers)
        {
            worker.JobId = job.Id;
            job.Ranks.Add(worker.Id);
        }
        JobChanged(job);
    }

    private void End(JobRecord job, JobState state, string? error)
    {
        bool wasQueued = job.State == JobState.Queued;
        job.State = state;
        job.Error = error;
        job.FinishedAt = Now;
        if (wasQueued) _queue.Remove(job);
        JobChanged(job);
        foreach (string workerId in job.Ranks)
        {
            var worker = _members.FindWorker(workerId);
            if (worker is null || worker.JobId != job.Id) continue;
            worker.JobId = null;
            if (state != JobState.Succeeded) _pendingAborts[workerId] = job.Id;
        }
        job.Ring?.Close();
        if (!wasQueued && !Replaying) _finished.Writer.TryWrite(job);
        Schedule();
    }

    private JobRecord RunningJob(string jobId, int rank)
    {
        if (!_jobs.TryGetValue(jobId, out var job))
            throw new ArgumentException($"job_id: '{jobId}' is not a job of this coordinator");
        if (job.State != JobState.Running)
            throw new InvalidOperationException($"job {jobId} is {job.State.ToString().ToLowerInvariant()}{(job.Error is null ? "" : ": " + job.Error)}");
        if (rank < 0 || rank >= job.Ranks.Count)
            throw new ArgumentException($"rank: {rank} is out of range; job {jobId} has ranks 0 to {job.Ranks.Count - 1}");
        return job;
    }
}

/// <summary>A job spec with invalid fields; each message names the field, value and expectation.</summary>
public sealed class JobRejectedException(IReadOnlyList<string> errors) : Exception(string.Join("; ", errors))
{
    public IReadOnlyList<string> Errors { get; } = errors;
}

/// <summary>A bounded collection of the coordinator (job queue, members) is full.</summary>
public sealed class QueueFullException(string message) : Exception(message);
