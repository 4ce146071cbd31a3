using System.Diagnostics;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Evaluation;
using Cluster.Worker.Tasks;
using Cluster.Worker.Telemetry;
using Microsoft.Extensions.Logging;
using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Training;

/// <summary>
/// One worker's part of a parameter-server job (scheme "ps", BSP). Per global step t:
/// pull version t, forward/backward on this rank's batch, push the gradient for step t.
/// At each epoch end: pull the epoch's final version, evaluate this rank's test slice, report.
/// </summary>
public sealed class ParameterServerTrainer(
    Assignment assignment,
    Coordinator.CoordinatorClient coordinator,
    WorkerOptions options,
    ILogger logger,
    WorkerTelemetry telemetry)
{
    private static readonly TimeSpan ProgressInterval = TimeSpan.FromSeconds(1);
    private StepTimer? _timer;
    private TensorBoardLog? _tensorBoard;
    private InitializeHeader? _initializeHeader;
    private float[] _initialParameters = [];
    private int _recoveries;
    private long _rejectedSinceReport;
    // Each epoch's batches and first step, kept so that steps lost with a restarted server can be
    // trained again on the same batches, even those of an earlier epoch.
    private readonly List<(int[] Indices, int[] Offsets, long FirstStep)> _epochs = [];
    private readonly HashSet<int> _evaluated = [];

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var spec = assignment.Spec;
        var device = DeviceSelector.Resolve(options.Device ?? spec.Device);
        var job = JobSpecification.FromProto(spec, assignment.WorldSize);
        using var task = TrainingTasks.Create(job, device);
        var model = task.Model;
        using var vector = new ParameterVector(model);
        var parameters = new float[vector.ElementCount];
        var gradients = new float[vector.ElementCount];
        using var servers = new ShardedParameterClient(
            assignment, vector.ElementCount, Shared.Wire.ElementCodec.Parse(spec.WireDtype), spec.TopkRatio, options);
        WorkerLog.JobStarted(logger, assignment.JobId, assignment.Rank, assignment.WorldSize, DeviceSelector.Describe(device), vector.ElementCount);

        vector.ReadParameters(AsBytes(parameters));
        // Kept to initialise a server that restarts without a checkpoint (it then starts over at version 0).
        _initialParameters = (float[])parameters.Clone();
        _initializeHeader = InitializeHeader(vector);
        _initializeHeader.Groups.AddRange(ParameterGroupRanges.For(task, _initializeHeader.Layout, _initializeHeader.Optimizer));
        await servers.InitializeAsync(_initializeHeader, parameters, cancellationToken);
        await servers.PullAsync(0, parameters, cancellationToken);
        vector.WriteParameters(AsBytes(parameters));

        long step = 0;
        int startAt = 0;
        for (int epoch = 0; epoch < spec.Epochs; epoch++)
        {
            try
            {
                // Each step ends with the next version loaded, so the epoch's final version is in the model here.
                step = await TrainEpochAsync(epoch, step, startAt, task, vector, servers, parameters, gradients, cancellationToken);
            }
            catch (RewindException rewind)
            {
                // The servers came back at a version of an earlier epoch: train on from there (its
                // evaluation, already reported, is not repeated).
                epoch = _epochs.FindLastIndex(e => e.FirstStep <= rewind.Version);
                (step, startAt) = (rewind.Version, (int)(rewind.Version - _epochs[epoch].FirstStep));
                epoch--;
                continue;
            }
            startAt = 0;
            if (epoch == spec.Epochs - 1 && assignment.Rank == 0 && job.SaveTo is { } path) FineTuning.Save(model, path, job);
            if (_evaluated.Add(epoch))
            {
                await EvaluateAsync(epoch, task, cancellationToken);
                if (assignment.Rank == 0 && job.OutputDir is { } output && task is IArtifactTask artifacts)
                {
                    Directory.CreateDirectory(output);
                    artifacts.WriteArtifacts(output, epoch);
                }
            }
        }
    }

    /// <summary>The servers restarted at <see cref="Version"/>, a step of an epoch before the current one.</summary>
    private sealed class RewindException(long version) : Exception($"parameter servers restarted at version {version}")
    {
        public long Version { get; } = version;
    }

    private static Span<byte> AsBytes(float[] values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan());

    /// <summary>Trains <paramref name="epoch"/> from its step <paramref name="startAt"/> (global step <paramref name="step"/>); returns the next global step.</summary>
    private async Task<long> TrainEpochAsync(
        int epoch, long step, int startAt, ITrainingTask task, ParameterVector vector,
        ShardedParameterClient servers, float[] parameters, float[] gradients, CancellationToken cancellationToken)
    {
        if (epoch == _epochs.Count)
        {
            var shard = await coordinator.GetShardAsync(
                new GetShardRequest { JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, TrainSampleCount = task.TrainCount },
                deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
            _epochs.Add(([.. shard.SampleIndices], [.. shard.StepOffsets], step));
        }
        var (indices, offsets, epochFirstStep) = _epochs[epoch];
        int stepCount = offsets.Length - 1;

        var sinceReport = Stopwatch.StartNew();
        double lossSum = 0, epochLossSum = 0;
        long sampleCount = 0, epochSampleCount = 0;
        _timer ??= new StepTimer(telemetry, assignment.JobId, assignment.Rank);
        _tensorBoard ??= TensorBoardLog.For(options.TensorBoardDirectory, assignment.JobId, assignment.Rank);
        int wireBytes = vector.ElementCount * Shared.Wire.ElementCodec.ElementBytes(servers.Dtype);
        for (int s = startAt; s < stepCount; s++, step++)
        {
            _timer.BeginStep(step);
            // Test-only fault injection: a slow device, counted as compute.
            if (options.SlowStepMillis > 0) await Task.Delay(options.SlowStepMillis, cancellationToken);
            var batch = indices.AsSpan(offsets[s], offsets[s + 1] - offsets[s]);
            lossSum += task.ComputeGradient(batch);
            sampleCount += batch.Length;
            vector.ReadGradients(AsBytes(gradients));
            // Test-only fault injection: one non-finite gradient, which the servers must refuse.
            if (step == options.NanGradientStep) gradients[0] = float.NaN;
            _timer.Computed();
            long? resumeAt = await ExchangeAsync(servers, step, batch.Length, gradients, parameters, cancellationToken);
            _timer.Exchanged(servers.PushesDoneTimestamp, servers.PullsStartedTimestamp, wireBytes, wireBytes, offsets[s + 1] - offsets[s]);
            vector.WriteParameters(AsBytes(parameters));
            if (resumeAt is { } version && version != step + 1)
            {
                // The servers went back to an older version: train its step again, on the same batch.
                if (version < epochFirstStep) throw new RewindException(version);
                (s, step) = ((int)(version - epochFirstStep) - 1, version - 1);
                continue;
            }

            if (sinceReport.Elapsed >= ProgressInterval || s == stepCount - 1)
            {
                var report = new ReportProgressRequest
                {
                    JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch,
                    StepsDone = s + 1, StepsTotal = stepCount, LossSum = lossSum, SampleCount = sampleCount,
                    RejectedGradients = _rejectedSinceReport,
                };
                _timer.Drain(report);
                _tensorBoard?.Progress(report, step + 1);
                await coordinator.ReportProgressAsync(report, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
                (epochLossSum, epochSampleCount) = (epochLossSum + lossSum, epochSampleCount + sampleCount);
                (lossSum, sampleCount, _rejectedSinceReport) = (0, 0, 0);
                sinceReport.Restart();
            }
        }
        WorkerLog.EpochTrained(logger, assignment.JobId, assignment.Rank, epoch, step, epochSampleCount == 0 ? 0 : epochLossSum / epochSampleCount);
        return step;
    }

    /// <summary>
    /// Pushes step's gradient and pulls the next version. When the servers are lost or restarted,
    /// waits for them, pulls the version they hold and returns it (the step to train next);
    /// otherwise returns null.
    /// </summary>
    private async Task<long?> ExchangeAsync(
        ShardedParameterClient servers, long step, int sampleCount, float[] gradients, float[] parameters, CancellationToken cancellationToken)
    {
        try
        {
            if (await servers.PushAndPullAsync(step, sampleCount, gradients, parameters, cancellationToken))
            {
                _rejectedSinceReport++;
                WorkerLog.GradientRejected(logger, assignment.JobId, assignment.Rank, step);
            }
            return null;
        }
        catch (Exception e) when (ShardedParameterClient.IsServerLost(e) && _recoveries < options.ServerRecoveriesMax && !cancellationToken.IsCancellationRequested)
        {
            _recoveries++;
            WorkerLog.ServerLost(logger, assignment.JobId, assignment.Rank, step, e.Message);
            long version = await servers.RecoverAsync(_initializeHeader!, _initialParameters, parameters, options.ServerRecoveryTimeout, cancellationToken);
            if (version > step + 1)
                throw new InvalidOperationException($"parameter servers: at version {version} after a restart; this rank was at step {step} and cannot skip steps", e);
            WorkerLog.ServerRecovered(logger, assignment.JobId, assignment.Rank, step, version, Math.Max(0, step - version));
            return version;
        }
    }

    private async Task EvaluateAsync(int epoch, ITrainingTask task, CancellationToken cancellationToken)
    {
        int classCount = task.ClassCount;
        var (start, count) = Evaluator.Slice(task.TestCount, assignment.Rank, assignment.WorldSize);
        var result = task.Evaluate(start, count);
        var request = new ReportEvaluationRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, ClassCount = classCount, LossSum = result.LossSum,
        };
        request.Confusion.AddRange(result.Confusion);
        // Scored predictions: test samples, or tokens for a language model.
        long scored = result.Confusion.Sum();
        if (_tensorBoard is not null && scored > 0)
        {
            long correct = 0;
            for (int c = 0; c < classCount; c++) correct += result.Confusion[c * classCount + c];
            _tensorBoard.Evaluation(epoch, result.LossSum / scored, (double)correct / scored);
        }
        await coordinator.ReportEvaluationAsync(request, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
    }

    private InitializeHeader InitializeHeader(ParameterVector vector) => new()
    {
        JobId = assignment.JobId,
        WorldSize = assignment.WorldSize,
        Layout = vector.Layout(),
        Dtype = DType.Float32,
        Optimizer = assignment.Spec.Optimizer,
        Sync = assignment.Spec.Sync,
        Staleness = assignment.Spec.Staleness,
    };
}
