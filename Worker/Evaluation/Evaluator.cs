using Cluster.Worker.Data;
using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Evaluation;

/// <summary>Runs a model over a range of a dataset and counts a confusion matrix and the summed loss.</summary>
public static class Evaluator
{
    private const int EvaluationBatchSize = 1000;

    /// <summary>Cross-entropy, or <paramref name="sumLoss"/> (logits, labels → summed per-sample loss).</summary>
    public static EvaluationResult Evaluate(nn.Module<Tensor, Tensor> model, BatchLoader loader, int start, int count, int classCount,
        Func<Tensor, Tensor, Tensor>? sumLoss = null)
    {
        sumLoss ??= (logits, labels) => nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum);
        model.eval();
        var confusion = new long[classCount * classCount];
        double lossSum = 0;
        using var noGrad = torch.no_grad();
        for (int batchStart = start; batchStart < start + count; batchStart += EvaluationBatchSize)
        {
            using var scope = torch.NewDisposeScope();
            int batchCount = Math.Min(EvaluationBatchSize, start + count - batchStart);
            var (inputs, labels) = loader.Range(batchStart, batchCount);
            var logits = model.forward(inputs);
            lossSum += sumLoss(logits, labels).item<float>();
            AddToConfusion(confusion, labels, logits.argmax(1), classCount);
        }
        return new EvaluationResult(confusion, classCount, lossSum);
    }

    /// <summary>Adds each (label, prediction) pair to the row-major matrix <c>[label * classCount + prediction]</c>.</summary>
    public static void AddToConfusion(long[] confusion, Tensor labels, Tensor predictions, int classCount)
    {
        using var scope = torch.NewDisposeScope();
        var cells = labels.mul(classCount).add_(predictions).bincount(null, classCount * classCount).cpu();
        var counts = cells.data<long>().ToArray();
        for (int i = 0; i < counts.Length; i++) confusion[i] += counts[i];
    }

    /// <summary>Rank's contiguous slice [start, start + count) of a set of <paramref name="total"/> samples.</summary>
    public static (int Start, int Count) Slice(int total, int rank, int worldSize)
    {
        int start = (int)((long)total * rank / worldSize);
        int end = (int)((long)total * (rank + 1) / worldSize);
        return (start, end - start);
    }
}
