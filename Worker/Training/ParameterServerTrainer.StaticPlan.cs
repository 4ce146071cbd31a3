using System.Diagnostics;
using Cluster.Protos;

namespace Cluster.Worker.Training;

/// <summary>
/// The static plan: rank r trains the r-th slice of every global batch of the coordinator's
/// epoch plan (GetShard). Used for SSP and ASP (whose servers apply pushes as they come, so
/// there is no applied-step record for leases) and on request (--static-plan). When the servers
/// come back from a checkpoint at an older version v, the rank pulls v and trains steps v and on
/// again on the same batches, even those of an earlier epoch (its evaluation is not repeated).
/// </summary>
public sealed partial class ParameterServerTrainer
{
    // Each epoch's batches and first step, kept so that steps lost with a restarted server can be
    // trained again on the same batches, even those of an earlier epoch.
    private readonly List<(int[] Indices, int[] Offsets, long FirstStep)> _epochs = [];
    private readonly HashSet<int> _evaluated = [];

    private async Task TrainWithStaticPlanAsync(Training training, CancellationToken cancellationToken)
    {
        await training.Servers.PullAsync(0, training.Parameters, cancellationToken);
        training.Vector.WriteParameters(AsBytes(training.Parameters));
        long step = 0;
        int startAt = 0;
        for (int epoch = 0; epoch < training.Job.Epochs; epoch++)
        {
            try
            {
                // Each step ends with the next version loaded, so the epoch's final version is in the model here.
                step = await TrainEpochAsync(training, epoch, step, startAt, cancellationToken);
            }
            catch (RewindException rewind)
            {
                // The servers came back at a version of an earlier epoch: train on from there.
                epoch = _epochs.FindLastIndex(e => e.FirstStep <= rewind.Version);
                (step, startAt) = (rewind.Version, (int)(rewind.Version - _epochs[epoch].FirstStep));
                epoch--;
                continue;
            }
            startAt = 0;
            SaveIfLast(training, epoch, assignment.Rank);
            if (_evaluated.Add(epoch)) await EvaluateAsync(epoch, assignment.Rank, assignment.WorldSize, training, cancellationToken);
        }
    }

    /// <summary>The servers restarted at <see cref="Version"/>, a step of an epoch before the current one.</summary>
    private sealed class RewindException(long version) : Exception($"parameter servers restarted at version {version}")
    {
        public long Version { get; } = version;
    }

    /// <summary>Trains <paramref name="epoch"/> from its step <paramref name="startAt"/> (global step <paramref name="step"/>); returns the next global step.</summary>
    private async Task<long> TrainEpochAsync(Training training, int epoch, long step, int startAt, CancellationToken cancellationToken)
    {
        if (epoch == _epochs.Count)
        {
            var shard = await CoordinatorRetry.CallAsync(options, deadline => coordinator.GetShardAsync(
                new GetShardRequest { JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, TrainSampleCount = training.Task.TrainCount }, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
            _epochs.Add(([.. shard.SampleIndices], [.. shard.StepOffsets], step));
        }
        var (indices, offsets, epochFirstStep) = _epochs[epoch];
        int stepCount = offsets.Length - 1;

        var sinceReport = Stopwatch.StartNew();
        double lossSum = 0, epochLossSum = 0;
        long sampleCount = 0, epochSampleCount = 0;
        _timer ??= new Telemetry.StepTimer(telemetry, assignment.JobId, assignment.Rank);
        _tensorBoard ??= Telemetry.TensorBoardLog.For(options.TensorBoardDirectory, assignment.JobId, assignment.Rank);
        int wireBytes = training.Vector.ElementCount * Shared.Wire.ElementCodec.ElementBytes(training.Servers.Dtype);
        for (int s = startAt; s < stepCount; s++, step++)
        {
            _timer.BeginStep(step);
            // Test-only fault injection: a slow device, counted as compute.
            if (options.SlowStepMillis > 0) await Task.Delay(options.SlowStepMillis, cancellationToken);
            var batch = indices.AsSpan(offsets[s], offsets[s + 1] - offsets[s]);
            var (loss, computed) = ComputeGradient(training, batch, step);
            lossSum += loss;
            sampleCount += batch.Length;
            _timer.Computed();
            long? resumeAt;
            using (computed) resumeAt = await ExchangeAsync(training.Servers, step, batch.Length, computed, training.Parameters, cancellationToken);
            _timer.Exchanged(training.Servers.PushesDoneTimestamp, training.Servers.PullsStartedTimestamp, wireBytes, wireBytes, offsets[s + 1] - offsets[s]);
            training.Vector.WriteParameters(AsBytes(training.Parameters));
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
                await CoordinatorRetry.CallAsync(options, deadline => coordinator.ReportProgressAsync(report, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
                (epochLossSum, epochSampleCount) = (epochLossSum + lossSum, epochSampleCount + sampleCount);
                (lossSum, sampleCount, _rejectedSinceReport) = (0, 0, 0);
                sinceReport.Restart();
            }
        }
        WorkerLog.EpochTrained(logger, assignment.JobId, assignment.Rank, epoch, step, epochSampleCount == 0 ? 0 : epochLossSum / epochSampleCount);
        return step;
    }
}
