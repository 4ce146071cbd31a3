using System.Diagnostics;
using Cluster.Protos;

namespace Cluster.Worker.Training;

/// <summary>
/// Shard leases (coordinator.proto, LeaseShard, asked on one LeaseShards stream:
/// <see cref="LeaseStream"/>). Per global step t: lease a shard for step t from the coordinator
/// (handing in which ranks' pushes made up the steps its last pull reported), forward/backward
/// on it, push the gradient as step t and pull version t + 1. The lease for step t + 1 is asked
/// as soon as that pull has said which ranks made up step t (which a BSP server sends before the
/// partitions, once every push of the step is complete), so its round trip overlaps the servers'
/// update and the rest of the pull; its reply is acted on once the pull has ended. When the coordinator says the
/// epoch is trained: evaluate the part of the test set it names,
/// report, and go on with the next epoch at the same step. A worker that joins a running job
/// first becomes a member of the servers' barrier at a step boundary and pulls that version.
/// A parameter server that comes back from a checkpoint at version v (steps from v on lost)
/// is followed: the rank pulls v and leases step v again saying the servers rewound, and the
/// coordinator takes back the lost steps' shards, which the ranks then train again on the same
/// batches (a rank that meets the rewind at the coordinator first is told to resynchronise).
/// </summary>
public sealed partial class ParameterServerTrainer
{
    private async Task TrainWithLeasesAsync(Training training, long serverVersion, CancellationToken cancellationToken)
    {
        var servers = training.Servers;
        long step = assignment.Join ? await servers.JoinAsync(serverVersion, cancellationToken) : 0;
        await servers.PullAsync(step, training.Parameters, cancellationToken);
        training.Vector.WriteParameters(AsBytes(training.Parameters));

        var state = new EpochState(assignment.Join ? -1 : 0);
        using var leases = new LeaseStream(coordinator,
            assignment.LeasePort > 0 ? LeasePortClient.For(options.CoordinatorUrl, assignment.LeasePort, options.Security!) : null,
            (reason, retryIn) => WorkerLog.LeasePortFallback(logger, assignment.JobId, assignment.Rank, reason, retryIn.TotalSeconds));
        bool rewound = false, parametersPulled = false, leaseTransportLogged = false;
        long generation = 0;
        Task<LeaseShardReply> Lease(int epoch, long leaseStep, bool serversRewound)
        {
            var request = new LeaseShardRequest
            {
                JobId = assignment.JobId, Rank = assignment.Rank, Epoch = epoch, Step = leaseStep,
                TrainSampleCount = training.Task.TrainCount, Applied = servers.LastApplied(), ServersRewound = serversRewound, LeaseGeneration = generation,
            };
            return CoordinatorRetry.CallAsync(options, deadline => leases.LeaseAsync(request, deadline, cancellationToken), cancellationToken);
        }
        Task<LeaseShardReply>? asked = null; // this step's lease, asked during the last step's exchange
        while (true)
        {
            var leasing = asked ?? Lease(rewound ? -1 : state.Epoch, step, rewound);
            asked = null;
            // The step's pulled parameters go into the model while a lease on the gRPC stream is on its way (nothing below reads
            // the model before; a lease on the lease port is a blocking call and has ended by then); on CPU the model shares
            // the buffer the pull wrote, and there is nothing to copy.
            if (parametersPulled) training.Vector.WriteParameters(AsBytes(training.Parameters));
            var lease = await leasing;
            if (!leaseTransportLogged && (leaseTransportLogged = true))
                WorkerLog.LeaseTransport(logger, assignment.JobId, assignment.Rank, leases.LastOnPort ? $"the coordinator's lease port ({assignment.LeasePort})" : "a gRPC stream");
            parametersPulled = false;
            (rewound, generation) = (false, lease.LeaseGeneration);
            switch (lease.Kind)
            {
                case LeaseShardReply.Types.Kind.Shard or LeaseShardReply.Types.Kind.Idle:
                    if (state.Epoch != lease.Epoch) state = new EpochState(lease.Epoch);
                    var next = new NextLease(() => Lease(state.Epoch, step + 1, serversRewound: false));
                    if (await TrainStepAsync(training, state, step, lease, next, cancellationToken) is { } version)
                    {
                        await next.DropAsync(cancellationToken);
                        (step, rewound) = (version, true);
                    }
                    else (step, parametersPulled, asked) = (step + 1, true, next.Asked);
                    break;
                case LeaseShardReply.Types.Kind.EpochDone:
                    await ReportProgressAsync(state, lease.PlannedSteps, step, force: true, cancellationToken);
                    WorkerLog.EpochTrained(logger, assignment.JobId, assignment.Rank, lease.Epoch, step, state.MeanLoss);
                    SaveIfLast(training, lease.Epoch, lease.EvaluationPart);
                    // An epoch trained again after a rewind is not evaluated again (the coordinator keeps the first result).
                    if (lease.EvaluationPart >= 0 && _evaluated.Add(lease.Epoch))
                        await EvaluateAsync(lease.Epoch, lease.EvaluationPart, lease.EvaluationParts, training, cancellationToken);
                    // After the last epoch's evaluation the job may already be over: nothing more to ask.
                    if (lease.Epoch == training.Job.Epochs - 1) return;
                    state = new EpochState(lease.Epoch + 1);
                    break;
                case LeaseShardReply.Types.Kind.Rewind:
                    // Another rank found the servers restarted with applied steps lost: take their version.
                    step = await RecoverFromRewindAsync(training, step, cancellationToken);
                    rewound = true;
                    break;
                default:
                    return;
            }
        }
    }

    /// <summary>Resynchronises with servers that came back from a checkpoint; returns their version (the step to train next).</summary>
    private async Task<long> RecoverFromRewindAsync(Training training, long step, CancellationToken cancellationToken)
    {
        if (++_recoveries > options.ServerRecoveriesMax)
            throw new InvalidOperationException($"parameter servers: rewound more than {options.ServerRecoveriesMax} times; giving up");
        long version = await training.Servers.RecoverAsync(_initializeHeader!, _initialParameters, training.Parameters, options.ServerRecoveryTimeout, cancellationToken);
        training.Vector.WriteParameters(AsBytes(training.Parameters));
        WorkerLog.ServerRecovered(logger, assignment.JobId, assignment.Rank, step, version, Math.Max(0, step - version));
        return version;
    }

    /// <summary>
    /// One global step on the leased shard (none when idle): compute, push as <paramref name="step"/>,
    /// pull step + 1, asking <paramref name="next"/> lease as soon as the pull has said which ranks made up the step.
    /// Returns null, with version step + 1 in training.Parameters for the caller to write into the model
    /// (it does so while its next lease is on the way), or the older version the servers came back at (the step to train next).
    /// </summary>
    private async Task<long?> TrainStepAsync(Training training, EpochState state, long step, LeaseShardReply lease, NextLease next,
        CancellationToken cancellationToken)
    {
        _timer ??= new Telemetry.StepTimer(telemetry, assignment.JobId, assignment.Rank);
        _tensorBoard ??= Telemetry.TensorBoardLog.For(options.TensorBoardDirectory, assignment.JobId, assignment.Rank);
        int wireBytes = training.Vector.ElementCount * Shared.Wire.ElementCodec.ElementBytes(training.Servers.Dtype);
        _timer.BeginStep(step);
        // Test-only fault injection: a slow device, counted as compute.
        if (options.SlowStepMillis > 0) await Task.Delay(options.SlowStepMillis, cancellationToken);
        int[] batch = [.. lease.SampleIndices];
        var (loss, computed) = ComputeGradient(training, batch, step);
        using var gradient = computed;
        state.LossSum += loss;
        state.SampleCount += batch.Length;
        _timer.Computed();
        while (await ExchangeAsync(training.Servers, step, batch.Length, gradient, training.Parameters, cancellationToken, next.Ask) is { } version
            && version != step + 1)
        {
            // A server came back from a checkpoint: at this very step the push is made again; earlier, applied steps were lost.
            // Once the next lease was asked the coordinator counts this step as applied, so the servers lost it too: a rewind.
            if (version != step || next.Asked is not null)
            {
                training.Vector.WriteParameters(AsBytes(training.Parameters));
                return version;
            }
        }
        _timer.Exchanged(training.Servers.PushesDoneTimestamp, training.Servers.PullsStartedTimestamp, wireBytes, wireBytes, batch.Length);
        state.Steps++;
        await ReportProgressAsync(state, lease.PlannedSteps, step, force: false, cancellationToken);
        return null;
    }

    /// <summary>
    /// The lease of the step after the one being trained, asked (<see cref="Ask"/>) once that
    /// step's pull has said which ranks made it up; null until then.
    /// </summary>
    private sealed class NextLease(Func<Task<LeaseShardReply>> ask)
    {
        public Task<LeaseShardReply>? Asked { get; private set; }

        public void Ask() => Asked ??= ask();

        /// <summary>
        /// Waits for a lease asked but not to be used (the servers were lost during the pull), dropping its
        /// reply or failure: one lease is asked at a time, and the next one says that the servers rewound.
        /// </summary>
        public async Task DropAsync(CancellationToken cancellationToken)
        {
            if (Asked is null) return;
            try { await Asked; }
            catch (Exception) when (!cancellationToken.IsCancellationRequested) { }
        }
    }

    private async Task ReportProgressAsync(EpochState state, int plannedSteps, long step, bool force, CancellationToken cancellationToken)
    {
        if (state.Epoch < 0 || (!force && state.SinceReport.Elapsed < ProgressInterval)) return;
        var report = new ReportProgressRequest
        {
            JobId = assignment.JobId, Rank = assignment.Rank, Epoch = state.Epoch,
            StepsDone = state.Steps, StepsTotal = Math.Max(plannedSteps, state.Steps), LossSum = state.LossSum, SampleCount = state.SampleCount,
            RejectedGradients = _rejectedSinceReport,
        };
        _timer?.Drain(report);
        _tensorBoard?.Progress(report, step + 1);
        await CoordinatorRetry.CallAsync(options, deadline => coordinator.ReportProgressAsync(report, deadline: deadline, cancellationToken: cancellationToken), cancellationToken);
        _rejectedSinceReport = 0;
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
}
