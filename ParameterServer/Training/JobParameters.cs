using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Cluster.ParameterServer.Aggregation;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// One job's float32 master weights for this server's key range, cut into partitions, under
/// BSP. Step t is applied partition by partition once every member rank's push of it is
/// complete (whole pushes only, so that a rank lost mid-push is never half-applied: see
/// JobParameters.Membership), by up to <see cref="ApplierCount"/> appliers at once (one core
/// updates a 100 MB range in about 40 ms, two in about 21), and a pull streams each partition as
/// soon as it reaches the version asked for. Pulls read the master buffer directly: a partition
/// at version t cannot move on while any rank still pulls it, because version t + 1 needs every
/// rank's push for step t, which a rank sends only after its pull of version t has ended.
/// </summary>
public sealed partial class JobParameters
{
    private readonly object _gate = new();
    private readonly float[] _weights;
    private readonly float[] _block = new float[StepAggregator.BlockElements]; // SSP and ASP's gradient, a block at a time (under the lock)
    private readonly StepAggregator _aggregator;
    private readonly IOptimizer _optimizer;
    private readonly long[] _partitionVersions;
    private readonly int[] _partitionArrivals;
    private bool[][] _excluded;                   // [partition][rank]: rank's part was rejected this step
    private RankPush[] _ranks;                    // grows when ranks join (Membership)
    private int _partitionsAhead;                 // partitions already at Version + 1
    private TaskCompletionSource _progress = NewSignal();
    private Exception? _failure;
    private bool _reachingVersion;                // every partition is applied; the next step waits for VersionReached
    private bool _closed;
    private bool _appliersOwed;                   // a step is queued, and the pusher that completed it wakes the appliers once it has answered
    private readonly ConcurrentQueue<int> _ready = new();  // a complete step's partitions that no applier has taken yet

    public JobParameters(string jobId, int worldSize, TensorLayout layout, OptimizerSettings optimizer, float[] initialWeights,
        long rangeStart = 0, int partitionElements = DefaultPartitionElements, IReadOnlyList<OptimizerGroup>? groups = null, int appliers = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(partitionElements, 1);
        (JobId, Layout, RangeStart, PartitionElements) = (jobId, layout, rangeStart, partitionElements);
        _weights = initialWeights;
        ElementCount = initialWeights.Length;
        PartitionCount = (ElementCount + partitionElements - 1) / partitionElements;
        _aggregator = new StepAggregator(worldSize, ElementCount);
        _optimizer = OptimizerGroups.Create(optimizer, groups ?? [], rangeStart, ElementCount);
        OptimizerSettings = optimizer;
        _partitionVersions = new long[PartitionCount];
        _partitionArrivals = new int[PartitionCount];
        _excluded = Enumerable.Range(0, PartitionCount).Select(_ => new bool[worldSize]).ToArray();
        _ranks = Enumerable.Range(0, worldSize).Select(_ => new RankPush()).ToArray();
        ApplierCount = Math.Clamp(appliers > 0 ? appliers : Environment.ProcessorCount, 1, PartitionCount);
    }

    public const int DefaultPartitionElements = Shared.Sharding.KeyRanges.DefaultPartitionElements;

    public string JobId { get; }
    public TensorLayout Layout { get; }
    public long RangeStart { get; }
    public int ElementCount { get; }
    public int PartitionElements { get; }
    public int PartitionCount { get; }
    public int WorldSize => _aggregator.WorldSize;
    /// <summary>How many partitions of a BSP step are applied at once: one per core unless told, at most one per partition.</summary>
    public int ApplierCount { get; }
    /// <summary>The version every partition has reached.</summary>
    public long Version { get; private set; }
    /// <summary>Partitions of pushes refused for NaN or Inf (counted as absent, never applied).</summary>
    public long RejectedGradients { get; private set; }

    public ReadOnlySpan<float> WeightsAsFloats => _weights;

    /// <summary>Elements of partition <paramref name="partition"/> of the master weights (see the class remarks).</summary>
    public ReadOnlyMemory<float> Partition(int partition) => _weights.AsMemory(PartitionStart(partition), PartitionLength(partition));

    public int PartitionStart(int partition) => partition * PartitionElements;
    public int PartitionLength(int partition) => Math.Min(PartitionElements, ElementCount - PartitionStart(partition));

    /// <summary>
    /// Opens rank's push of <paramref name="step"/>; returns the buffer to receive it into, as
    /// <paramref name="stored"/> (see <see cref="StepAggregator.StoredAs"/>). A push
    /// of a step this rank has already delivered (a retry after a lost reply) is accepted as a
    /// duplicate: it is read into a scratch buffer and nothing of it is applied again (see
    /// JobParameters.Duplicates.cs).
    /// </summary>
    public Memory<float> BeginPush(int rank, long step, int sampleCount, DType stored = DType.Float32)
    {
        lock (_gate)
        {
            CheckRank(rank);
            var push = _ranks[rank];
            if (push.Open)
                throw new PushRejectedException($"rank: {rank} is already pushing step {push.Step} of job {JobId} on another call");
            if (TryBeginDuplicate(rank, step) is { } scratch) return scratch;
            if (step != ExpectedStep(rank)) throw StepMismatch(rank, step);
            if (!IsAsync) CheckMember(rank, step);
            RecordLead(step);
            if (push.Step != step) (push.Step, push.Delivered, push.Rejected) = (step, 0, false);
            if (push.Delivered > 0 && _aggregator.Encoding(rank) != stored)
                throw new PushRejectedException(
                    $"dtype: rank {rank} resends step {step} as {stored}; the partitions it already delivered are {_aggregator.Encoding(rank)}, expected the same wire type");
            push.Open = true;
            push.Duplicate = false;
            _aggregator.SetSampleCount(rank, sampleCount);
            _aggregator.SetEncoding(rank, stored);
            return push.Delivered == 0 ? _aggregator.BufferFor(rank) : RetryBuffer(rank);
        }
    }

    /// <summary>
    /// Rank has received its first <paramref name="receivedElements"/> elements: every partition
    /// they complete counts as delivered, and a partition delivered by every rank is applied.
    /// A partition holding NaN or Inf is refused: it takes no part in the mean. With
    /// <paramref name="callerApplies"/>, a step this completes waits for the caller to answer
    /// its push and call <see cref="ApplyQueuedPartitions"/>, which wakes the appliers then:
    /// woken at once, they would take the cores from the answer.
    /// </summary>
    public void Received(int rank, int receivedElements, bool callerApplies = false)
    {
        lock (_gate)
        {
            var push = _ranks[rank];
            if (push.Duplicate) return;
            if (!IsAsync && !IsMember(rank, Version)) return; // removed mid-push: what it still sends is discarded
            int delivered = receivedElements >= ElementCount ? PartitionCount : receivedElements / PartitionElements;
            for (int p = push.Delivered; p < delivered; p++)
            {
                CopyRetriedPartition(rank, p);
                if (!_aggregator.IsFinite(rank, PartitionStart(p), PartitionLength(p)))
                {
                    _excluded[p][rank] = true;
                    push.Rejected = true;
                    RejectedGradients++;
                }
                _partitionArrivals[p]++;
            }
            push.Delivered = Math.Max(push.Delivered, delivered);
            if (!IsAsync) EnqueueIfStepComplete(callerApplies);
        }
    }

    /// <summary>Closes rank's push; returns the version the server holds.</summary>
    public long CompletePush(int rank)
    {
        lock (_gate)
        {
            var push = _ranks[rank];
            push.Open = false;
            EndRetry(rank);
            if (push.Duplicate) return DuplicateCompleted(rank);
            if (push.Delivered != PartitionCount)
                throw new PushRejectedException(
                    $"chunks: rank {rank} delivered {push.Delivered} of {PartitionCount} partitions of step {push.Step}; push the rest again");
            if (IsAsync) ApplyOnArrival(rank);
            if (push.Rejected)
                throw new NonFiniteGradientException(
                    $"gradient: rank {rank} step {push.Step} contains NaN or Inf; the partitions holding them were refused, not applied");
            return Version;
        }
    }

    /// <summary>
    /// Closes a push that failed; the partitions it delivered stay delivered, and a retry of the
    /// push skips them (they may be being applied).
    /// </summary>
    public void AbortPush(int rank)
    {
        lock (_gate)
            if (rank >= 0 && rank < WorldSize) (_ranks[rank].Open, _ranks[rank].Duplicate) = (false, EndRetry(rank));
    }

    /// <summary>Completes when partition <paramref name="partition"/> has reached <paramref name="minVersion"/>.</summary>
    public Task WaitForPartitionAsync(int partition, long minVersion, CancellationToken cancellationToken) =>
        WaitUntilAsync(static (job, at) => job.IsAsync ? job.MayPull(at.MinVersion) : job._partitionVersions[at.Partition] >= at.MinVersion,
            (Partition: partition, MinVersion: minVersion), cancellationToken);

    /// <summary>
    /// Completes once <paramref name="reached"/> (asked under the lock, each time the job makes
    /// progress) holds; fails if applying updates failed.
    /// </summary>
    private async Task WaitUntilAsync<TState>(Func<JobParameters, TState, bool> reached, TState state, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task progress;
            lock (_gate)
            {
                if (reached(this, state)) return;
                if (_failure is not null) throw new InvalidOperationException($"job {JobId}: applying updates failed", _failure);
                progress = _progress.Task;
            }
            await progress.WaitAsync(cancellationToken);
        }
    }

    /// <summary>Completes when every partition has reached <paramref name="minVersion"/>.</summary>
    public async Task WaitForVersionAsync(long minVersion, CancellationToken cancellationToken)
    {
        for (int p = 0; p < PartitionCount; p++) await WaitForPartitionAsync(p, minVersion, cancellationToken);
    }

    /// <summary>Applying failed: a bug, not an input. Every waiter fails loudly instead of hanging to its deadline.</summary>
    private void Fail(Exception e)
    {
        lock (_gate)
        {
            _failure = e;
            _progress.TrySetException(e);
        }
    }

    /// <summary>
    /// Applies, on the caller's thread, the queued partitions of a complete step that nobody has
    /// taken yet, after waking the appliers a step completed by <see cref="Received"/> with
    /// callerApplies owes (one fewer than otherwise: the caller is one; none for a step of at
    /// most <see cref="PartitionsTheCallerAppliesAlone"/> partitions). For the thread that
    /// completed the step, once it has answered the push: it is awake and starts on the first
    /// partition at once, while the appliers are still being woken.
    /// </summary>
    public void ApplyQueuedPartitions()
    {
        int owed;
        lock (_gate)
        {
            owed = _appliersOwed && PartitionCount > PartitionsTheCallerAppliesAlone ? Math.Min(ApplierCount, PartitionCount - 1) : 0;
            _appliersOwed = false;
        }
        WakeAppliers(owed);
        ApplyUntilNoneQueued();
    }

    /// <summary>
    /// A step this small (the mlp's 3 partitions, the cnn's 2) is applied by the thread that
    /// completed it alone: appliers woken for it came when it was nearly done, and the exchange of
    /// a 1-worker mlp step took 0.08 ms longer with them (BENCHMARKS.md, "The 100 MB sync over a
    /// 10 Gb/s link, and appliers on threads of their own").
    /// </summary>
    private const int PartitionsTheCallerAppliesAlone = 4;

    /// <summary>Asks <paramref name="count"/> applier threads (<see cref="ApplierThreads"/>) to apply queued partitions.</summary>
    private void WakeAppliers(int count)
    {
        for (int i = 0; i < count; i++) ApplierThreads.Run(ApplyUntilNoneQueued);
    }

    /// <summary>
    /// What an applier does: applies queued partitions, one at a time, until none is left. The
    /// heavy work runs outside the lock: nobody reads or writes a queued partition until its
    /// version moves on (the class remarks give the BSP argument), and each partition is taken by
    /// one thread. A failure fails the job's waiters.
    /// </summary>
    private void ApplyUntilNoneQueued()
    {
        try
        {
            while (_ready.TryDequeue(out int partition)) ApplyPartition(partition);
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    [ThreadStatic] private static float[]? t_block;    // the combined gradient of the partition this thread applies, a block at a time

    private void ApplyPartition(int partition)
    {
        var block = t_block ??= new float[StepAggregator.BlockElements];
        int start = PartitionStart(partition), length = PartitionLength(partition);
        long reached = 0;
        var copyType = PullCopyType;
        // A partition that every rank sent with NaN or Inf is not applied at all: not even
        // weight decay or momentum moves it.
        bool applied = !_aggregator.AllExcluded(_excluded[partition]);
        // A block at a time: a combined or decoded block is consumed while it is in cache.
        for (int offset = start; offset < start + length; offset += block.Length)
            ApplyBlock(partition, offset, Math.Min(block.Length, start + length - offset), applied, copyType, block);
        lock (_gate)
        {
            PullCopyReached(partition, _partitionVersions[partition] + 1, copyType);
            _partitionVersions[partition]++;
            _partitionArrivals[partition] = 0;
            Array.Clear(_excluded[partition]);
            if (++_partitionsAhead == PartitionCount)
            {
                _partitionsAhead = 0;
                Version++;
                reached = Version;
                _stepQueued = false;
                _reachingVersion = true;
            }
            SignalProgress();
        }
        if (reached == 0) return;
        // Every partition is at the new version and the next step is not queued until this
        // ends, so no applier writes weights or optimizer state now: a snapshot taken here is consistent.
        VersionReached?.Invoke(this, reached);
        lock (_gate)
        {
            _reachingVersion = false;
            OnStepApplied();
        }
    }

    /// <summary>
    /// Steps the block of <paramref name="length"/> elements at <paramref name="offset"/> (when
    /// <paramref name="applied"/>) and writes it into the pull copy as <paramref name="copyType"/>
    /// (unless Float32). A rank that pushed bfloat16 alone is stepped from its elements as they
    /// came, and a bfloat16 copy is then written in the same pass.
    /// </summary>
    private void ApplyBlock(int partition, int offset, int length, bool applied, DType copyType, float[] block)
    {
        var weights = _weights.AsSpan(offset, length);
        long version = _partitionVersions[partition] + 1;
        bool copied = false;
        if (applied)
        {
            var sole = _aggregator.SoleBFloat16(offset, length, _excluded[partition]);
            if (sole.IsEmpty) _optimizer.StepRange(offset, weights, _aggregator.Combined(offset, block.AsSpan(0, length), _excluded[partition]), version);
            else
            {
                var copy = copyType == DType.Bfloat16 ? MemoryMarshal.Cast<byte, ushort>(PullCopyBytes(offset, length, copyType)) : [];
                _optimizer.StepRange(offset, weights, sole, copy, version);
                copied = !copy.IsEmpty;
            }
        }
        if (copyType != DType.Float32 && !copied) ElementCodec.Encode(weights, PullCopyBytes(offset, length, copyType), copyType);
    }

    /// <summary>The job is dropped: no step of it is queued any more.</summary>
    public void Close()
    {
        lock (_gate) _closed = true;
    }

    /// <summary>Wakes whoever waits for a partition, a version or a step to complete. Call under the lock.</summary>
    private void SignalProgress()
    {
        var progress = _progress;
        _progress = NewSignal();
        progress.SetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private void CheckRank(int rank)
    {
        if (rank < 0 || rank >= WorldSize)
            throw new PushRejectedException($"rank: {rank} is out of range; job {JobId} has ranks 0 to {WorldSize - 1}");
    }

    private sealed class RankPush
    {
        public long Step = -1;
        public int Delivered;
        public bool Open;
        public bool Rejected;
        public bool Duplicate;                    // this call repeats a push already delivered
    }
}

/// <summary>A push that does not fit the job's current state; the caller gets FailedPrecondition.</summary>
public class PushRejectedException(string message) : Exception(message);

/// <summary>A push whose gradient held NaN or Inf: its partitions were counted and left out of the step.</summary>
public sealed class NonFiniteGradientException(string message) : PushRejectedException(message);
