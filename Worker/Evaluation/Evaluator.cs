using Cluster.Worker.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Evaluation;

/// <summary>Runs a model over a range of a dataset and counts a confusion matrix and the summed loss.</summary>
public static class Evaluator
{
    private const int EvaluationBatchSize = 1000;

    public sealed record Result(long[] Confusion, int ClassCount, double LossSum);

    public static Result Evaluate(nn.Module<Tensor, Tensor> model, BatchLoader loader, int start, int count, int classCount)
    {
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
            lossSum += nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).item<float>();
            var cells = labels.mul(classCount).add_(logits.argmax(1)).bincount(null, classCount * classCount).cpu();
            var counts = cells.data<long>().ToArray();
            for (int i = 0; i < counts.Length; i++) confusion[i] += counts[i];
        }
        return new Result(confusion, classCount, lossSum);
    }

    /// <summary>Rank's contiguous slice [start, start + count) of a set of <paramref name="total"/> samples.</summary>
    public static (int Start, int Count) Slice(int total, int rank, int worldSize)
    {
        int start = (int)((long)total * rank / worldSize);
        int end = (int)((long)total * (rank + 1) / worldSize);
        return (start, end - start);
    }
}
