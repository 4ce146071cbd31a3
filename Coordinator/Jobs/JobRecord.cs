using Cluster.Shared.Evaluation;
using Cluster.Shared.Jobs;
using Cluster.Shared.Sharding;

namespace Cluster.Coordinator.Jobs;

public enum JobState { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>
/// Results of one finished epoch. Perplexity (e^test loss per token) only for language models;
/// per-class metrics and the merged confusion matrix (row-major [true * classes + predicted]) only for classifiers.
/// </summary>
public sealed record EpochResult(
    int Epoch, double TrainLoss, double TestLoss, double Accuracy, double Precision, double Recall, double F1,
    double SamplesPerSecond, double Seconds, double? Perplexity = null,
    IReadOnlyList<ClassMetrics>? PerClass = null, IReadOnlyList<long>? Confusion = null);

/// <summary>
/// A job's state at the coordinator: its ranks, epoch plans, progress reports and the
/// evaluations merged across ranks. Not thread-safe: <see cref="JobBoard"/> guards it.
/// </summary>
public sealed partial class JobRecord(string id, JobSpecification spec, DateTimeOffset submittedAt)
{
    private readonly Dictionary<int, EpochPlan> _plans = [];
    private readonly Dictionary<int, EpochProgress> _epochs = [];

    /// <summary>Largest training set a job may plan epochs over.</summary>
    public const int TrainSamplesMax = 100_000_000;

    public string Id { get; } = id;
    public JobSpecification Spec { get; } = spec;
    public JobState State { get; set; } = JobState.Queued;
    public string? Error { get; set; }
    public DateTimeOffset SubmittedAt { get; } = submittedAt;
    public DateTimeOffset? StartedAt { get; set; }
    public DateTimeOffset? FinishedAt { get; set; }
    /// <summary>Worker id of each rank.</summary>
    public List<string> Ranks { get; } = [];
    public List<string> ParameterServers { get; } = [];
    public List<EpochResult> Results { get; } = [];
    public int? TrainSampleCount { get; private set; }
    public bool IsFinished => State is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    /// <summary>The epoch plan, after checking that the rank agrees on the training-set size.</summary>
    public EpochPlan Plan(int epoch, int trainSampleCount, DateTimeOffset now, int? workers = null)
    {
        CheckEpoch(epoch);
        // The plan holds one index per sample: bound it, so a bad count cannot exhaust the coordinator's memory.
        int countMax = Spec.TrainLimit > 0 ? Spec.TrainLimit : TrainSamplesMax;
        if (trainSampleCount <= 0 || trainSampleCount > countMax)
            throw new ArgumentException($"train_sample_count: {trainSampleCount}; expected 1 to {countMax}");
        TrainSampleCount ??= trainSampleCount;
        if (TrainSampleCount != trainSampleCount)
            throw new ArgumentException($"train_sample_count: {trainSampleCount} differs from the {TrainSampleCount} other ranks loaded; check every worker has the same dataset");
        if (!_plans.TryGetValue(epoch, out var plan))
        {
            plan = NewPlan(epoch, trainSampleCount, workers ?? Spec.Workers);
            _plans[epoch] = plan;
            _plans.Remove(epoch - 2);
        }
        Epoch(epoch).StartedAt ??= now;
        return plan;
    }

    /// <summary>
    /// Adds a rank's progress report; returns false for a repeated one (no further than the
    /// rank's last report of the epoch: a retry whose reply was lost), whose sums are not added again.
    /// </summary>
    public bool RecordProgress(int rank, int epoch, int stepsDone, int stepsTotal, double lossSum, long sampleCount, DateTimeOffset now)
    {
        CheckEpoch(epoch);
        if (stepsTotal < 0 || stepsDone < 0 || stepsDone > stepsTotal)
            throw new ArgumentException($"steps_done: {stepsDone} of steps_total {stepsTotal}; expected 0 <= steps_done <= steps_total");
        if (sampleCount < 0 || !double.IsFinite(lossSum))
            throw new ArgumentException($"loss_sum: {lossSum} over sample_count {sampleCount}; expected a finite sum over a count >= 0");
        var progress = Epoch(epoch);
        progress.StartedAt ??= now;
        bool repeated = progress.StepsDone.TryGetValue(rank, out int last) && stepsDone <= last && sampleCount > 0;
        progress.StepsDone[rank] = Math.Max(stepsDone, last);
        progress.StepsTotal = stepsTotal;
        if (!repeated)
        {
            progress.LossSum += lossSum;
            progress.SampleCount += sampleCount;
            if (sampleCount > 0) progress.RecentLoss = lossSum / sampleCount;
        }
        if (progress.StepsDone.Values.All(s => s == stepsTotal) && progress.StepsDone.Count >= LiveWorkerCount)
            progress.TrainedAt ??= now;
        return !repeated;
    }

    /// <summary>Adds one rank's evaluation; returns true when it completed the epoch.</summary>
    public bool RecordEvaluation(int rank, int epoch, int classCount, IReadOnlyList<long> confusion, double lossSum, DateTimeOffset now)
    {
        CheckEpoch(epoch);
        if (!double.IsFinite(lossSum))
            throw new ArgumentException($"loss_sum: {lossSum}; expected a finite number");
        if (confusion.Any(cell => cell < 0))
            throw new ArgumentException("confusion: negative cell; expected counts >= 0");
        var progress = Epoch(epoch);
        if (classCount <= 0 || classCount > 1000 || confusion.Count != classCount * classCount)
            throw new ArgumentException($"confusion: {confusion.Count} cells for class_count {classCount}; expected class_count squared");
        if (!progress.EvaluatedRanks.Add(rank)) return false;
        progress.Confusion ??= new long[classCount * classCount];
        if (progress.Confusion.Length != confusion.Count)
            throw new ArgumentException($"class_count: {classCount} differs from other ranks' evaluation");
        for (int i = 0; i < confusion.Count; i++) progress.Confusion[i] += confusion[i];
        progress.TestLossSum += lossSum;
        return TryFinishEpoch(epoch, now);
    }

    /// <summary>Merges the epoch's evaluations into its result once every rank that evaluates it has reported.</summary>
    private bool TryFinishEpoch(int epoch, DateTimeOffset now)
    {
        var progress = Epoch(epoch);
        if (progress.Finished || progress.Confusion is null) return false;
        if (progress.EvaluatedRanks.Count < EvaluatorCount(epoch, progress.EvaluatedRanks)) return false;
        progress.Finished = true;
        int classCount = (int)Math.Round(Math.Sqrt(progress.Confusion.Length));

        var metrics = ClassificationMetrics.FromConfusion(progress.Confusion, classCount, progress.TestLossSum);
        var trainedAt = progress.TrainedAt ?? now;
        double seconds = (trainedAt - (progress.StartedAt ?? trainedAt)).TotalSeconds;
        Results.Add(new EpochResult(
            epoch, progress.SampleCount == 0 ? 0 : progress.LossSum / progress.SampleCount, metrics.Loss,
            metrics.Accuracy, metrics.Precision, metrics.Recall, metrics.F1,
            seconds > 0 ? progress.SampleCount / seconds : 0, seconds,
            Spec.IsLanguageModel ? Math.Exp(metrics.Loss) : null,
            Spec.IsLanguageModel ? null : ClassMetrics.FromConfusion(progress.Confusion, classCount),
            Spec.IsLanguageModel ? null : [.. progress.Confusion]));
        return true;
    }

    /// <summary>The live view of the newest epoch with any progress.</summary>
    public (int Epoch, int StepsDone, int StepsTotal, double RecentLoss, double SamplesPerSecond)? Live(DateTimeOffset now)
    {
        if (_epochs.Count == 0) return null;
        int epoch = _epochs.Keys.Max();
        var progress = _epochs[epoch];
        int stepsDone = progress.StepsDone.Count == 0 ? 0 : progress.StepsDone.Values.Min();
        double seconds = ((progress.TrainedAt ?? now) - (progress.StartedAt ?? now)).TotalSeconds;
        return (epoch, stepsDone, progress.StepsTotal, progress.RecentLoss, seconds > 0 ? progress.SampleCount / seconds : 0);
    }

    private void CheckEpoch(int epoch)
    {
        if (epoch < 0 || epoch >= Spec.Epochs)
            throw new ArgumentException($"epoch: {epoch} is out of range; job {Id} has epochs 0 to {Spec.Epochs - 1}");
    }

    private EpochProgress Epoch(int epoch)
    {
        if (!_epochs.TryGetValue(epoch, out var progress))
            _epochs[epoch] = progress = new EpochProgress();
        return progress;
    }

    private sealed class EpochProgress
    {
        public DateTimeOffset? StartedAt { get; set; }
        public DateTimeOffset? TrainedAt { get; set; }
        public Dictionary<int, int> StepsDone { get; } = [];
        public int StepsTotal { get; set; }
        public double LossSum { get; set; }
        public long SampleCount { get; set; }
        public double RecentLoss { get; set; }
        public HashSet<int> EvaluatedRanks { get; } = [];
        public long[]? Confusion { get; set; }
        public double TestLossSum { get; set; }
        public bool Finished { get; set; }
    }
}
