using System.Diagnostics;
using Cluster.Protos;
using Cluster.Sdk;
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
/// One worker's part of a parameter-server job (scheme "ps"). Two ways to get the batches:
/// <list type="bullet">
/// <item>Shard leases (BSP, the default; ParameterServerTrainer.Leases.cs): per global step the
/// rank leases a shard from the coordinator, which keeps an exact audit of the samples trained
/// and hands a lost rank's shards to the survivors.</item>
/// <item>A static plan (ParameterServerTrainer.StaticPlan.cs; SSP, ASP, or --static-plan): each
/// rank trains its fixed slice of every global batch, and when a parameter server comes back
/// from a checkpoint at an older version the ranks train the lost steps again on the same batches.</item>
/// </list>
/// Either way, a step is: forward/backward, push the gradient as step t, pull version t + 1.
/// </summary>
public sealed partial class ParameterServerTrainer(
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
    private bool _transportsLogged;

    /// <summary>Whether this job's batches come from shard leases (else from the static plan).</summary>
    public static bool UsesLeases(JobSpec spec) => !spec.StaticPlan && spec.Sync is "" or JobSpecification.SyncBsp;

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var spec = assignment.Spec;
        var device = DeviceSelector.Resolve(options.Device ?? spec.Device);
        var job = JobSpecification.FromProto(spec, assignment.WorldSize);
        using var task = TrainingTasks.Create(job, device);
        using var vector = new ParameterVector(task.Model);
        var parameters = new float[vector.ElementCount];
        var gradients = new float[vector.ElementCount];
        using var servers = new ShardedParameterClient(
            assignment, vector.ElementCount, Shared.Wire.ElementCodec.Parse(spec.WireDtype), spec.TopkRatio, options);
        WorkerLog.JobStarted(logger, assignment.JobId, assignment.Rank, assignment.WorldSize, DeviceSelector.Describe(device), vector.ElementCount);

        // On CPU the model's parameters live in the buffer pulls write: a pull updates the model with no copy.
        vector.ShareParameters(parameters);
        // Kept to initialise a server that restarts without a checkpoint (it then starts over at version 0).
        _initialParameters = (float[])parameters.Clone();
        _initializeHeader = InitializeHeader(vector);
        _initializeHeader.Groups.AddRange(ParameterGroupRanges.For(task, _initializeHeader.Layout, _initializeHeader.Optimizer));
        long[] versions = await servers.InitializeAsync(_initializeHeader, parameters, cancellationToken);
        var training = new Training(job, task, vector, servers, parameters, gradients);
        if (UsesLeases(spec))
            await TrainWithLeasesAsync(training, versions.Max(), cancellationToken);
        else
            await TrainWithStaticPlanAsync(training, cancellationToken);
    }

    /// <summary>What a job's training loop works with.</summary>
    private sealed record Training(
        JobSpecification Job, ITrainingTask Task, ParameterVector Vector, ShardedParameterClient Servers, float[] Parameters, float[] Gradients);

    private static Span<byte> AsBytes(float[] values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan());

    /// <summary>
    /// Forward and backward of one batch; returns the summed loss and the gradient to push, to be
    /// disposed once it is pushed (on CPU, the gradient tensors' own memory; zeros for an empty batch).
    /// </summary>
    private (double Loss, StepGradient Gradient) ComputeGradient(Training training, ReadOnlySpan<int> batch, long step)
    {
        double loss = 0;
        StepGradient gradient;
        if (batch.Length > 0)
        {
            loss = training.Task.ComputeGradient(batch);
            gradient = training.Vector.Gradients(training.Gradients);
        }
        else
        {
            Array.Clear(training.Gradients); // an idle step: the servers give it no weight
            gradient = StepGradient.Of(training.Gradients);
        }
        if (step == options.NanGradientStep)
        {
            // Test-only fault injection: one non-finite gradient, which the servers must refuse.
            gradient.CopyTo(training.Gradients);
            gradient.Dispose();
            training.Gradients[0] = float.NaN;
            gradient = StepGradient.Of(training.Gradients);
        }
        return (loss, gradient);
    }

    /// <summary>
    /// Pushes step's gradient and pulls the next version. When the servers are lost or restarted,
    /// waits for them, pulls the version they hold and returns it (the step to train next);
    /// otherwise returns null. <paramref name="whenApplied"/>: see <see cref="ShardedParameterClient.PushAndPullAsync"/>.
    /// </summary>
    private async Task<long?> ExchangeAsync(
        ShardedParameterClient servers, long step, int sampleCount, StepGradient gradient, float[] parameters, CancellationToken cancellationToken,
        Action? whenApplied = null)
    {
        try
        {
            // Over data ports the pushes are blocking calls made here on the compute thread (their answers wake it
            // directly) while the pull waits on the thread pool. Over gRPC a dense exchange touches no tensors and runs
            // on the thread pool, where its streams can use another core; top-k selection runs libtorch, so a sparse
            // exchange stays on the compute thread.
            var exchange = servers.Sparse || servers.Blocking
                ? servers.PushAndPullAsync(step, sampleCount, gradient, parameters, cancellationToken, whenApplied)
                : Task.Run(() => servers.PushAndPullAsync(step, sampleCount, gradient, parameters, cancellationToken, whenApplied), cancellationToken);
            if (await exchange)
            {
                _rejectedSinceReport++;
                WorkerLog.GradientRejected(logger, assignment.JobId, assignment.Rank, step);
            }
            if (!_transportsLogged)
            {
                _transportsLogged = true;
                foreach (var (server, transport) in servers.DescribeTransports()) WorkerLog.ServerTransport(logger, assignment.JobId, assignment.Rank, server, transport);
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

    /// <summary>Evaluates part <paramref name="part"/> of <paramref name="parts"/> of the test set and reports it; rank 0's part also writes the task's artefacts.</summary>
    private async Task EvaluateAsync(int epoch, int part, int parts, Training training, CancellationToken cancellationToken)
    {
        var task = training.Task;
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
        await CoordinatorRetry.CallAsync(options, deadline => coordinator.ReportEvaluationAsync(request, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
        if (part == 0 && training.Job.OutputDir is { } output && task is IArtifactTask artifacts)
        {
            Directory.CreateDirectory(output);
            artifacts.WriteArtifacts(output, epoch);
        }
    }

    /// <summary>The final epoch's model goes to --save-to, written by the first evaluator (rank 0 may be gone).</summary>
    private static void SaveIfLast(Training training, int epoch, int part)
    {
        if (epoch == training.Job.Epochs - 1 && part == 0 && training.Job.SaveTo is { } path) FineTuning.Save(training.Task.Model, path, training.Job);
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
