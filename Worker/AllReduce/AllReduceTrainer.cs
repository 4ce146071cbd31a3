using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;
using Cluster.Worker.Data;
using Cluster.Worker.Evaluation;
using Cluster.Worker.Models;
using Cluster.Worker.Training;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// One worker's part of an allreduce job. Every member holds the whole model and the same
/// optimizer (Shared/Optimizers, as on the parameter server). Per global step t: forward and
/// backward on this rank's batch, ring all-reduce of the gradient (sample-weighted mean), then
/// the optimizer on the flat parameter vector, so every member applies the same bytes to the
/// same bytes and the replicas stay bitwise identical. A broken ring is re-formed through the
/// coordinator and the step retried (see ring.proto, steps 5 and 6).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "RunAsync owns and disposes the ring session; the field lends it to the step methods")]
public sealed class AllReduceTrainer(Assignment assignment, Coordinator.CoordinatorClient coordinator, PeerHost peers, WorkerOptions options, ILogger logger)
{
    private const int StepAttemptsMax = 6;
    private static readonly TimeSpan ProgressInterval = TimeSpan.FromSeconds(1);

    private Replica _replica = null!;
    private RingSession _ring = null!;

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var spec = assignment.Spec;
        var device = DeviceSelector.Resolve(options.Device ?? spec.Device);
        var data = DatasetCatalog.Load(spec.Dataset, spec.DataDir.Length == 0 ? null : spec.DataDir);
        var train = data.Train.Take(spec.TrainLimit);
        var test = data.Test.Take(spec.TestLimit);
        using var trainLoader = new BatchLoader(train, device);
        using var testLoader = new BatchLoader(test, device);
        using var model = ModelZoo.Create(spec.Model, spec.Seed, train.Height, train.Width, train.ClassCount);
        model.to(device);
        using var vector = new ParameterVector(model);
        WorkerLog.JobStarted(logger, assignment.JobId, assignment.Rank, assignment.WorldSize, DeviceSelector.Describe(device), vector.ElementCount);

        _replica = new Replica(vector, OptimizerSettings.FromProto(spec.Optimizer).Create(vector.ElementCount));
        peers.Inbox.Publish(assignment.JobId, _replica.Serve);
        await using var ring = _ring = new RingSession(assignment, coordinator, peers, options, logger);
        try
        {
            await JoinAsync(cancellationToken);
            long step = 0;
            for (int epoch = 0; epoch < spec.Epochs; epoch++)
            {
                step = await TrainEpochAsync(epoch, step, model, trainLoader, cancellationToken);
                // --save-to: the first member of the ring writes the final model before its last report (the replicas are equal).
                if (epoch == spec.Epochs - 1 && _ring.Position == 0 && spec.SaveTo.Length > 0)
                    Checkpoints.FineTuning.Save(model, spec.SaveTo, Shared.Jobs.JobSpecification.FromProto(spec, assignment.WorldSize));
                await EvaluateAsync(epoch, model, testLoader, train.ClassCount, cancellationToken);
            }
            _ring.MarkCompleted();
            await SaveAsync(cancellationToken);
        }
        catch (RingExcludedException)
        {
            AllReduceLog.Excluded(logger, assignment.JobId, assignment.Rank);
        }
        finally
        {
            peers.Inbox.Publish(assignment.JobId, null);
        }
    }

    private async Task<long> TrainEpochAsync(int epoch, long step, nn.Module<Tensor, Tensor> model, BatchLoader loader, CancellationToken cancellationToken)
    {
        var shard = await CoordinatorRetry.CallAsync(options, deadline => coordinator.GetShardAsync(
            new GetShardRequest { JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, TrainSampleCount = loader.Count }, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
        int[] indices = [.. shard.SampleIndices];
        int[] offsets = [.. shard.StepOffsets];
        int stepCount = offsets.Length - 1;
        var sinceReport = Stopwatch.StartNew();
        double lossSum = 0;
        long sampleCount = 0;
        for (int s = 0; s < stepCount; s++, step++)
        {
            // A member that caught up with another's reduced gradient has already applied this step.
            if (_replica.CommittedStep <= step)
            {
                int count = offsets[s + 1] - offsets[s];
                lossSum += GradientStep.Compute(model, loader, indices.AsSpan(offsets[s], count));
                sampleCount += count;
                await ReduceAndApplyAsync(step, count, cancellationToken);
            }
            if (sinceReport.Elapsed >= ProgressInterval || s == stepCount - 1)
            {
                await CoordinatorRetry.CallAsync(options, deadline => coordinator.ReportProgressAsync(new ReportProgressRequest
                {
                    JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch,
                    StepsDone = s + 1, StepsTotal = stepCount, LossSum = lossSum, SampleCount = sampleCount,
                }, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
                (lossSum, sampleCount) = (0, 0);
                sinceReport.Restart();
            }
        }
        return step;
    }

    /// <summary>All-reduces the gradient left in the model, then applies it; re-forms the ring and retries on failure.</summary>
    private async Task ReduceAndApplyAsync(long step, int sampleCount, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            var gradient = _replica.GradientBuffer(step);
            _replica.Vector.ReadGradients(gradient.Span);
            try
            {
                // On the thread pool: the reduction touches no tensors and overlaps its sends, receives and additions.
                if (_ring.Size > 1) await Task.Run(() => _ring.Reducer.ReduceAsync(_ring.Link, step, gradient, sampleCount, cancellationToken), cancellationToken);
                _replica.Apply(step);
                return;
            }
            catch (RingBrokenException e) when (attempt < StepAttemptsMax && !cancellationToken.IsCancellationRequested)
            {
                AllReduceLog.RingBroken(logger, assignment.JobId, assignment.Rank, _ring.Generation, e.Message);
                if (await JoinAsync(cancellationToken)) return;
            }
        }
    }

    /// <summary>
    /// Joins the next ring generation and brings this replica to the ring's state: the initial
    /// broadcast from the first member, or the one step it may be behind. Returns true when it
    /// applied the step it was working on (from another member's reduced gradient).
    /// </summary>
    private async Task<bool> JoinAsync(CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                if (!await _ring.JoinAsync(_replica.CommittedStep, cancellationToken)) throw new RingExcludedException();
                return await SynchronizeAsync(cancellationToken);
            }
            catch (RingBrokenException e) when (attempt < StepAttemptsMax && !cancellationToken.IsCancellationRequested)
            {
                AllReduceLog.RingBroken(logger, assignment.JobId, assignment.Rank, _ring.Generation, e.Message);
            }
        }
    }

    private async Task<bool> SynchronizeAsync(CancellationToken cancellationToken)
    {
        var members = _ring.Members;
        long newest = members.Max(m => m.CommittedStep), oldest = members.Min(m => m.CommittedStep);
        if (newest - oldest > 1)
            throw new InvalidOperationException($"ring generation {_ring.Generation}: members are at steps {oldest} to {newest}; at most one step apart is possible");
        long mine = _replica.CommittedStep;
        if (newest == 0 && _ring.Position != 0)
        {
            await _ring.FetchAsync(members[0], FetchKind.Parameters, 0, _replica.Parameters, cancellationToken);
            _replica.Vector.WriteParameters(_replica.Parameters.Span);
            return false;
        }
        if (newest == mine) return false;
        var source = members.First(m => m.CommittedStep == newest);
        await _ring.FetchAsync(source, FetchKind.ReducedGradient, mine, _replica.GradientBuffer(mine), cancellationToken);
        _replica.Apply(mine);
        AllReduceLog.CaughtUp(logger, assignment.JobId, assignment.Rank, newest, source.Rank);
        return true;
    }

    private async Task EvaluateAsync(int epoch, nn.Module<Tensor, Tensor> model, BatchLoader loader, int classCount, CancellationToken cancellationToken)
    {
        // The test set is shared among the members of the ring as it is now.
        var (start, count) = Evaluator.Slice(loader.Count, _ring.Position, Math.Max(1, _ring.Size));
        var result = Evaluator.Evaluate(model, loader, start, count, classCount);
        var request = new ReportEvaluationRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, ClassCount = classCount, LossSum = result.LossSum,
        };
        request.Confusion.AddRange(result.Confusion);
        await CoordinatorRetry.CallAsync(options, deadline => coordinator.ReportEvaluationAsync(request, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
    }

    /// <summary>Logs the final parameters' hash and, when asked, writes them as raw float32 for comparison.</summary>
    private async Task SaveAsync(CancellationToken cancellationToken)
    {
        string hash = Convert.ToHexStringLower(SHA256.HashData(_replica.Parameters.Span));
        AllReduceLog.FinalHash(logger, assignment.JobId, assignment.Rank, hash);
        if (options.ParametersOutDirectory is not { } directory) return;
        Directory.CreateDirectory(directory);
        await File.WriteAllBytesAsync(Path.Combine(directory, $"{assignment.JobId}.rank{assignment.Rank}.f32"), _replica.Parameters, cancellationToken);
    }

    /// <summary>
    /// The replica's flat state: parameters, the optimizer, and two gradient buffers used in
    /// turn, so that the reduced gradient of step t stays readable (for a member that is one
    /// step behind) while step t + 1 is reduced.
    /// </summary>
    private sealed class Replica
    {
        private readonly ParameterVector _vector;
        private readonly IOptimizer _optimizer;
        private readonly byte[][] _gradients;
        private readonly float[] _parameters;
        private long _lastApplied = -1;

        public Replica(ParameterVector vector, IOptimizer optimizer)
        {
            (_vector, _optimizer) = (vector, optimizer);
            _gradients = [new byte[vector.ByteCount], new byte[vector.ByteCount]];
            _parameters = new float[vector.ElementCount];
            // On CPU the model's parameters live in this buffer: the optimizer's step and a fetch update the model with no copy.
            if (!vector.ShareParameters(_parameters)) vector.ReadParameters(MemoryMarshal.AsBytes(_parameters.AsSpan()));
            Parameters = FloatMemory.AsWritableBytes(_parameters);
        }

        public ParameterVector Vector => _vector;
        public Memory<byte> Parameters { get; }
        /// <summary>Optimizer steps applied (the next step to train).</summary>
        public long CommittedStep => _optimizer.StepCount;

        public Memory<byte> GradientBuffer(long step) => _gradients[step % 2];

        /// <summary>Applies the reduced gradient of <paramref name="step"/> (in its buffer) and loads the result into the model.</summary>
        public void Apply(long step)
        {
            if (step != CommittedStep) throw new InvalidOperationException($"step {step} applied at committed step {CommittedStep}");
            // The optimizers of Shared/Optimizers leave the gradient unchanged, so it can still be served.
            _optimizer.Step(_parameters, MemoryMarshal.Cast<byte, float>(_gradients[step % 2].AsSpan()));
            Volatile.Write(ref _lastApplied, step);
            _vector.WriteParameters(Parameters.Span);
        }

        /// <summary>What the RingPeer Fetch call serves (called on the service's threads).</summary>
        public ReadOnlyMemory<byte>? Serve(FetchRequest request) => request.Kind switch
        {
            FetchKind.Parameters => Parameters,
            FetchKind.ReducedGradient when request.Step >= 0 && Volatile.Read(ref _lastApplied) == request.Step => _gradients[request.Step % 2],
            _ => null,
        };
    }
}

/// <summary>The coordinator dropped this worker from the job's ring.</summary>
public sealed class RingExcludedException() : Exception("dropped from the ring");
