using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Cluster.ParameterServer.Aggregation;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// One job's float32 master weights on this server, BSP-synchronous: version t is produced by
/// the gradients of every rank for step t. Pulls of version t are served straight from the
/// master buffer: under BSP it cannot change while any rank still pulls it, because version
/// t + 1 needs every rank's push for step t, which a rank sends only after its pull.
/// </summary>
public sealed class JobParameters
{
    private readonly object _gate = new();
    private readonly byte[] _weights;
    private readonly float[] _combinedGradient;
    private readonly StepAggregator _aggregator;
    private readonly IOptimizer _optimizer;
    private readonly bool[] _receiving;
    private TaskCompletionSource _nextVersion = NewSignal();

    public JobParameters(string jobId, int worldSize, TensorLayout layout, OptimizerSettings optimizer, byte[] initialWeights)
    {
        JobId = jobId;
        Layout = layout;
        _weights = initialWeights;
        ElementCount = initialWeights.Length / sizeof(float);
        _combinedGradient = new float[ElementCount];
        _aggregator = new StepAggregator(worldSize, ElementCount);
        _optimizer = optimizer.Create(ElementCount);
        _receiving = new bool[worldSize];
    }

    public string JobId { get; }
    public TensorLayout Layout { get; }
    public int ElementCount { get; }
    public int WorldSize => _aggregator.WorldSize;
    public long Version { get; private set; }
    public long RejectedGradients { get; private set; }

    /// <summary>The master weights as raw bytes (see the class remarks for when they may be read).</summary>
    public ReadOnlyMemory<byte> Weights => _weights;

    public ReadOnlySpan<float> WeightsAsFloats => MemoryMarshal.Cast<byte, float>(_weights.AsSpan());

    /// <summary>Rank's buffer to receive the gradient of <paramref name="step"/> into, after checking the push is for the current step.</summary>
    public Memory<byte> BeginPush(int rank, long step)
    {
        lock (_gate)
        {
            CheckRank(rank);
            if (step != Version)
                throw new PushRejectedException($"step: {step} is not the current step {Version} of job {JobId}");
            if (_aggregator.HasArrived(rank))
                throw new PushRejectedException($"rank: {rank} already pushed step {step} of job {JobId}");
            if (_receiving[rank])
                throw new PushRejectedException($"rank: {rank} is already pushing step {step} of job {JobId} on another call");
            _receiving[rank] = true;
            return _aggregator.BufferFor(rank);
        }
    }

    /// <summary>Releases a rank's buffer after a push that failed before <see cref="CompletePush"/>.</summary>
    public void AbortPush(int rank)
    {
        lock (_gate)
            if (rank >= 0 && rank < WorldSize) _receiving[rank] = false;
    }

    /// <summary>Records a fully received push; applies the optimizer when it completes the step. Returns the version after.</summary>
    public long CompletePush(int rank, long step, int sampleCount)
    {
        lock (_gate)
        {
            CheckRank(rank);
            _receiving[rank] = false;
            if (step != Version || _aggregator.HasArrived(rank))
                throw new PushRejectedException($"step: {step} of rank {rank} is no longer open in job {JobId} (version {Version})");
            var gradient = MemoryMarshal.Cast<byte, float>(_aggregator.BufferFor(rank).Span);
            if (!float.IsFinite(TensorPrimitives.MaxMagnitude(gradient)))
            {
                RejectedGradients++;
                throw new PushRejectedException($"gradient: rank {rank} step {step} contains NaN or Inf; rejected, not applied");
            }
            _aggregator.MarkArrived(rank, sampleCount);
            if (!_aggregator.IsComplete) return Version;

            _aggregator.Combine(_combinedGradient);
            _optimizer.Step(MemoryMarshal.Cast<byte, float>(_weights.AsSpan()), _combinedGradient);
            Version++;
            var reached = _nextVersion;
            _nextVersion = NewSignal();
            reached.SetResult();
            return Version;
        }
    }

    /// <summary>Completes when the version is at least <paramref name="minVersion"/>.</summary>
    public async Task WaitForVersionAsync(long minVersion, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task next;
            lock (_gate)
            {
                if (Version >= minVersion) return;
                next = _nextVersion.Task;
            }
            await next.WaitAsync(cancellationToken);
        }
    }

    private void CheckRank(int rank)
    {
        if (rank < 0 || rank >= WorldSize)
            throw new PushRejectedException($"rank: {rank} is out of range; job {JobId} has ranks 0 to {WorldSize - 1}");
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>A push that does not fit the job's current state; the caller gets FailedPrecondition.</summary>
public sealed class PushRejectedException(string message) : Exception(message);
