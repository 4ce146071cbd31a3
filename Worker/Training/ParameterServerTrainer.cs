using System.Diagnostics;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Evaluation;
using Cluster.Worker.Tasks;
using Cluster.Worker.Telemetry;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Training;

/// <summary>
/// One worker's part of a parameter-server job (scheme "ps", BSP, coordinator.proto step 9).
/// Per global step t: lease a shard for step t from the coordinator (handing in which ranks'
/// pushes made up the steps its last pull reported), forward/backward on it, push the gradient
/// as step t and pull version t + 1. When the coordinator says the epoch is trained: evaluate
/// the part of the test set it names, report, and go on with the next epoch at the same step.
/// A worker that joins a running job first becomes a member of the servers' barrier at a
/// step boundary and pulls that version.
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
        var initialized = await servers.InitializeAsync(InitializeHeader(vector), parameters, cancellationToken);
        long step = assignment.Join ? await servers.JoinAsync(initialized.Max(r => r.Version), cancellationToken) : 0;
        await servers.PullAsync(step, parameters, cancellationToken);
        vector.WriteParameters(AsBytes(parameters));

        var state = new EpochState(assignment.Join ? -1 : 0);
        while (true)
        {
            var lease = await coordinator.LeaseShardAsync(new LeaseShardRequest
            {
                JobId = assignment.JobId, Rank = assignment.Rank, Epoch = state.Epoch, Step = step,
                TrainSampleCount = task.TrainCount, Applied = servers.LastApplied(),
            }, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
            switch (lease.Kind)
            {
                case LeaseShardReply.Types.Kind.Shard or LeaseShardReply.Types.Kind.Idle:
                    if (state.Epoch != lease.Epoch) state = new EpochState(lease.Epoch);
                    await TrainStepAsync(state, step, lease, task, vector, servers, parameters, gradients, cancellationToken);
                    step++;
                    break;
                case LeaseShardReply.Types.Kind.EpochDone:
                    await ReportProgressAsync(state, lease.PlannedSteps, step, force: true, cancellationToken);
                    WorkerLog.EpochTrained(logger, assignment.JobId, assignment.Rank, lease.Epoch, step, state.MeanLoss);
                    // The first evaluator writes the checkpoint: rank 0 may be gone.
                    if (lease.Epoch == spec.Epochs - 1 && lease.EvaluationPart == 0 && job.SaveTo is { } path) FineTuning.Save(model, path, job);
                    if (lease.EvaluationPart >= 0) await EvaluateAsync(lease.Epoch, lease.EvaluationPart, lease.EvaluationParts, task, cancellationToken);
                    // After the last epoch's evaluation the job may already be over: nothing more to ask.
                    if (lease.Epoch == spec.Epochs - 1) return;
                    state = new EpochState(lease.Epoch + 1);
                    break;
                default:
                    return;
            }
        }
    }

    private static Span<byte> AsBytes(float[] values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan());

    /// <summary>One global step on the leased shard (none when idle): compute, push as <paramref name="step"/>, pull step + 1.</summary>
    private async Task TrainStepAsync(
        EpochState state, long step, LeaseShardReply lease, ITrainingTask task, ParameterVector vector,
        ShardedParameterClient servers, float[] parameters, float[] gradients, CancellationToken cancellationToken)
    {
        _timer ??= new StepTimer(telemetry, assignment.JobId, assignment.Rank);
        _tensorBoard ??= TensorBoardLog.For(options.TensorBoardDirectory, assignment.JobId, assignment.Rank);
        int wireBytes = vector.ElementCount * Shared.Wire.ElementCodec.ElementBytes(servers.Dtype);
        _timer.BeginStep(step);
        // Test-only fault injection: a slow device, counted as compute.
        if (options.SlowStepMillis > 0) await Task.Delay(options.SlowStepMillis, cancellationToken);
        int[] batch = [.. lease.SampleIndices];
        if (batch.Length > 0)
        {
            state.LossSum += task.ComputeGradient(batch);
            vector.ReadGradients(AsBytes(gradients));
        }
        else
        {
            Array.Clear(gradients); // an idle step: the servers give it no weight
        }
        state.SampleCount += batch.Length;
        _timer.Computed();
        await servers.PushAndPullAsync(step, batch.Length, gradients, parameters, cancellationToken);
        _timer.Exchanged(servers.PushesDoneTimestamp, servers.PullsStartedTimestamp, wireBytes, wireBytes, batch.Length);
        vector.WriteParameters(AsBytes(parameters));
        state.Steps++;
        await ReportProgressAsync(state, lease.PlannedSteps, step, force: false, cancellationToken);
    }

    private async Task ReportProgressAsync(EpochState state, int plannedSteps, long step, bool force, CancellationToken cancellationToken)
    {
        if (state.Epoch < 0 || (!force && state.SinceReport.Elapsed < ProgressInterval)) return;
        var report = new ReportProgressRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, Epoch = state.Epoch,
            StepsDone = state.Steps, StepsTotal = Math.Max(plannedSteps, state.Steps), LossSum = state.LossSum, SampleCount = state.SampleCount,
        };
        _timer?.Drain(report);
        _tensorBoard?.Progress(report, step + 1);
        await coordinator.ReportProgressAsync(report, deadline: DateTime.UtcNow + options.CallTimeout, cancellationToken: cancellationToken);
        state.Reported();
    }

    /// <summary>This rank's training in one epoch: steps, and loss not yet reported.</summary>
    private sealed class EpochState(int epoch)
    {
        public int Epoch { get; } = epoch;
        public int Steps { get; set; }
        public double LossSum { get; set; }
        public long SampleCount { get; set; }
        public Stopwatch SinceReport { get; } = Stopwatch.StartNew();
        private double _epochLossSum;
        private long _epochSampleCount;
        public double MeanLoss => _epochSampleCount == 0 ? 0 : _epochLossSum / _epochSampleCount;

        public void Reported()
        {
            (_epochLossSum, _epochSampleCount) = (_epochLossSum + LossSum, _epochSampleCount + SampleCount);
            (LossSum, SampleCount) = (0, 0);
            SinceReport.Restart();
        }
    }

    private async Task EvaluateAsync(int epoch, int part, int parts, ITrainingTask task, CancellationToken cancellationToken)
    {
        int classCount = task.ClassCount;
        var (start, count) = Evaluator.Slice(task.TestCount, part, parts);
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
