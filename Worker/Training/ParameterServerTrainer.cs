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
        var header = InitializeHeader(vector);
        header.Groups.AddRange(ParameterGroupRanges.For(task, header.Layout, header.Optimizer));
        await servers.InitializeAsync(header, parameters, cancellationToken);
        await servers.PullAsync(0, parameters, cancellationToken);
        vector.WriteParameters(AsBytes(parameters));

        long step = 0;
        for (int epoch = 0; epoch < spec.Epochs; epoch++)
        {
            // Each step ends with the next version loaded, so the epoch's final version is in the model here.
            step = await TrainEpochAsync(epoch, step, task, vector, servers, parameters, gradients, cancellationToken);
            if (epoch == spec.Epochs - 1 && assignment.Rank == 0 && job.SaveTo is { } path) FineTuning.Save(model, path, job);
            await EvaluateAsync(epoch, task, cancellationToken);
            if (assignment.Rank == 0 && job.OutputDir is { } output && task is IArtifactTask artifacts)
            {
                Directory.CreateDirectory(output);
                artifacts.WriteArtifacts(output, epoch);
            }
        }
    }

    private static Span<byte> AsBytes(float[] values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan());

    private async Task<long> TrainEpochAsync(
        int epoch, long step, ITrainingTask task, ParameterVector vector,
        ShardedParameterClient servers, float[] parameters, float[] gradients, CancellationToken cancellationToken)
    {
        var shard = await coordinator.GetShardAsync(
            new GetShardRequest { JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, TrainSampleCount = task.TrainCount },
            deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
        int[] indices = [.. shard.SampleIndices];
        int[] offsets = [.. shard.StepOffsets];
        int stepCount = offsets.Length - 1;

        var sinceReport = Stopwatch.StartNew();
        double lossSum = 0, epochLossSum = 0;
        long sampleCount = 0, epochSampleCount = 0;
        _timer ??= new StepTimer(telemetry, assignment.JobId, assignment.Rank);
        _tensorBoard ??= TensorBoardLog.For(options.TensorBoardDirectory, assignment.JobId, assignment.Rank);
        int wireBytes = vector.ElementCount * Shared.Wire.ElementCodec.ElementBytes(servers.Dtype);
        for (int s = 0; s < stepCount; s++, step++)
        {
            _timer.BeginStep(step);
            // Test-only fault injection: a slow device, counted as compute.
            if (options.SlowStepMillis > 0) await Task.Delay(options.SlowStepMillis, cancellationToken);
            var batch = indices.AsSpan(offsets[s], offsets[s + 1] - offsets[s]);
            lossSum += task.ComputeGradient(batch);
            sampleCount += batch.Length;
            vector.ReadGradients(AsBytes(gradients));
            _timer.Computed();
            await servers.PushAndPullAsync(step, batch.Length, gradients, parameters, cancellationToken);
            _timer.Exchanged(servers.PushesDoneTimestamp, servers.PullsStartedTimestamp, wireBytes, wireBytes, offsets[s + 1] - offsets[s]);
            vector.WriteParameters(AsBytes(parameters));

            if (sinceReport.Elapsed >= ProgressInterval || s == stepCount - 1)
            {
                var report = new ReportProgressRequest
                {
                    JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch,
                    StepsDone = s + 1, StepsTotal = stepCount, LossSum = lossSum, SampleCount = sampleCount,
                };
                _timer.Drain(report);
                _tensorBoard?.Progress(report, step + 1);
                await coordinator.ReportProgressAsync(report, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
                (epochLossSum, epochSampleCount) = (epochLossSum + lossSum, epochSampleCount + sampleCount);
                (lossSum, sampleCount) = (0, 0);
                sinceReport.Restart();
            }
        }
        WorkerLog.EpochTrained(logger, assignment.JobId, assignment.Rank, epoch, step, epochSampleCount == 0 ? 0 : epochLossSum / epochSampleCount);
        return step;
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
    };
}
