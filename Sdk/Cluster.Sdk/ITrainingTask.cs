using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Sdk;

/// <summary>
/// What one job trains, seen from the training loop: a model, what a batch of sample indices
/// is, its loss, and how a slice of the test set is scored. The built-in image classifiers,
/// language models and GAN implement it, and so does a user's own task: the worker loads the
/// user's assembly and builds the type through a public constructor taking a
/// <see cref="TaskContext"/> (or a parameterless one).
/// </summary>
public interface ITrainingTask : IDisposable
{
    /// <summary>The model, on the training device, with the job's initial weights (the same on every rank: seed them).</summary>
    nn.Module<Tensor, Tensor> Model { get; }

    /// <summary>Training samples (images, or text windows) that the epoch plan permutes.</summary>
    int TrainCount { get; }

    /// <summary>Test (validation) samples that the ranks evaluate in slices.</summary>
    int TestCount { get; }

    /// <summary>Classes of the confusion matrix: labels, or the vocabulary for a language model.</summary>
    int ClassCount { get; }

    /// <summary>Forward and backward of one batch; leaves the batch-mean gradient in .grad and returns the summed per-sample loss (0 for an empty batch).</summary>
    double ComputeGradient(ReadOnlySpan<int> indices);

    /// <summary>Confusion matrix and summed loss over test samples [start, start + count) (tokens for a language model).</summary>
    EvaluationResult Evaluate(int start, int count);
}

/// <summary>
/// A confusion matrix (row: true class, column: predicted class, ClassCount x ClassCount,
/// row-major) and the summed loss of the scored predictions; the coordinator merges the ranks'.
/// </summary>
public sealed record EvaluationResult(long[] Confusion, int ClassCount, double LossSum);

/// <summary>What the job gives a task when the worker builds it.</summary>
/// <param name="DataDirectory">The job's --data, a path on the worker; null when not given.</param>
/// <param name="Seed">Seed of the initial weights: seed TorchSharp with it so that every rank builds the same model.</param>
/// <param name="TrainLimit">Train on the first N samples only; 0: all.</param>
/// <param name="TestLimit">Evaluate on the first N test samples only; 0: all.</param>
/// <param name="Device">The training device; move the model and batches to it.</param>
public sealed record TaskContext(string? DataDirectory, long Seed, int TrainLimit, int TestLimit, Device Device);

/// <summary>
/// A task whose parameters form several groups, each updated by its own optimizer with its own
/// state on the parameter servers (e.g. a GAN's generator and discriminator). A group is the
/// parameters whose names start with its prefix; they must be consecutive in named_parameters() order.
/// </summary>
public interface IParameterGroupTask
{
    IReadOnlyList<ParameterGroupSpec> ParameterGroups { get; }
}

/// <summary>One parameter group: its name and the parameter-name prefix that selects its parameters.</summary>
public sealed record ParameterGroupSpec(string Name, string Prefix);

/// <summary>A task that writes files at the end of each epoch (rank 0 only, into the job's output directory).</summary>
public interface IArtifactTask
{
    /// <summary>Writes this epoch's artefacts (0-based <paramref name="epoch"/>) into <paramref name="directory"/>, which exists.</summary>
    void WriteArtifacts(string directory, int epoch);
}
