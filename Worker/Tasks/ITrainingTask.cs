using Cluster.Worker.Evaluation;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>
/// What one job trains, seen from the training loop: a model, what a batch of sample indices
/// is, its loss, and how a slice of the test set is scored. Image classification and language
/// modelling both fit it, so one loop (and one wire protocol) trains them all.
/// </summary>
public interface ITrainingTask : IDisposable
{
    /// <summary>The model, on the training device, with the job's initial weights (seeded or from a checkpoint).</summary>
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
    Evaluator.Result Evaluate(int start, int count);
}
