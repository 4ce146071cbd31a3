using System.Diagnostics;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Evaluation;
using Cluster.Worker.Tasks;
using Microsoft.Extensions.Logging;
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
    ILogger logger)
{
    private static readonly TimeSpan ProgressInterval = TimeSpan.FromSeconds(1);

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var spec = assignment.Spec;
        var device = DeviceSelector.Resolve(options.Device ?? spec.Device);
        var job = JobSpecification.FromProto(spec, assignment.WorldSize);
        using var task = TrainingTasks.Create(job, device);
        var model = task.Model;
        using var vector = new ParameterVector(model);
        var parameters = new byte[vector.ByteCount];
        var gradients = new byte[vector.ByteCount];
        using var server = new ParameterServerClient(assignment.ParameterServers[0], options.ConnectTimeout, options.CallTimeout, options.BarrierTimeout);
        WorkerLog.JobStarted(logger, assignment.JobId, assignment.Rank, assignment.WorldSize, DeviceSelector.Describe(device), vector.ElementCount);

        vector.ReadParameters(parameters);
        await server.InitializeAsync(InitializeHeader(vector), parameters, cancellationToken);

        long step = 0;
        for (int epoch = 0; epoch < spec.Epochs; epoch++)
        {
            step = await TrainEpochAsync(epoch, step, task, vector, server, parameters, gradients, cancellationToken);
            await server.PullAsync(assignment.JobId, step, parameters, cancellationToken);
            vector.WriteParameters(parameters);
            if (epoch == spec.Epochs - 1 && assignment.Rank == 0 && job.SaveTo is { } path) FineTuning.Save(model, path, job);
            await EvaluateAsync(epoch, task, cancellationToken);
        }
    }

    private async Task<long> TrainEpochAsync(
        int epoch, long step, ITrainingTask task, ParameterVector vector,
        ParameterServerClient server, byte[] parameters, byte[] gradients, CancellationToken cancellationToken)
    {
        var shard = await coordinator.GetShardAsync(
            new GetShardRequest { JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, TrainSampleCount = task.TrainCount },
            deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
        int[] indices = [.. shard.SampleIndices];
        int[] offsets = [.. shard.StepOffsets];
        int stepCount = offsets.Length - 1;

        var sinceReport = Stopwatch.StartNew();
        double lossSum = 0;
        long sampleCount = 0;
        for (int s = 0; s < stepCount; s++, step++)
        {
            await server.PullAsync(assignment.JobId, step, parameters, cancellationToken);
            vector.WriteParameters(parameters);
            var batch = indices.AsSpan(offsets[s], offsets[s + 1] - offsets[s]);
            lossSum += task.ComputeGradient(batch);
            sampleCount += batch.Length;
            vector.ReadGradients(gradients);
            var header = new PushHeader { JobId = assignment.JobId, Rank = assignment.Rank, Step = step, SampleCount = batch.Length, Dtype = DType.Float32 };
            await server.PushAsync(header, gradients, cancellationToken);

            if (sinceReport.Elapsed >= ProgressInterval || s == stepCount - 1)
            {
                await coordinator.ReportProgressAsync(new ReportProgressRequest
                {
                    JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch,
                    StepsDone = s + 1, StepsTotal = stepCount, LossSum = lossSum, SampleCount = sampleCount,
                }, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
                (lossSum, sampleCount) = (0, 0);
                sinceReport.Restart();
            }
        }
        return step;
    }

    private async Task EvaluateAsync(int epoch, ITrainingTask task, CancellationToken cancellationToken)
    {
        var (start, count) = Evaluator.Slice(task.TestCount, assignment.Rank, assignment.WorldSize);
        var result = task.Evaluate(start, count);
        var request = new ReportEvaluationRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, ClassCount = task.ClassCount, LossSum = result.LossSum,
        };
        request.Confusion.AddRange(result.Confusion);
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
