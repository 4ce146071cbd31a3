using Cluster.Worker.Data;
using Cluster.Worker.Evaluation;
using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>
/// Next-character prediction: a sample is a window of context + 1 tokens; the model reads the
/// first context tokens and is scored (cross-entropy) on predicting each following one. A
/// sample's loss is its mean per-token loss; evaluation counts every token in the confusion
/// matrix, so the job's test loss is the mean per-token loss (perplexity = e^loss).
/// </summary>
public sealed class LanguageModelTask : ITrainingTask
{
    private const int EvaluationBatchSize = 128;

    private readonly TextDataset _trainSet;
    private readonly TextDataset _testSet;
    private readonly Tensor _trainTokens;
    private readonly Tensor _testTokens;
    private readonly Tensor _offsets;
    private readonly Device _device;

    public LanguageModelTask(nn.Module<Tensor, Tensor> model, TextDataset train, TextDataset test, int vocabulary, Device device)
    {
        Model = model;
        (_trainSet, _testSet, _device) = (train, test, device);
        _trainTokens = torch.tensor(train.Tokens, dtype: ScalarType.Int64, device: device);
        _testTokens = torch.tensor(test.Tokens, dtype: ScalarType.Int64, device: device);
        _offsets = torch.arange(train.Context + 1, dtype: ScalarType.Int64, device: device);
        ClassCount = vocabulary;
    }

    public nn.Module<Tensor, Tensor> Model { get; }
    public int TrainCount => _trainSet.Count;
    public int TestCount => _testSet.Count;
    public int ClassCount { get; }

    public double ComputeGradient(ReadOnlySpan<int> indices)
    {
        Model.train();
        Model.zero_grad();
        if (indices.Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var starts = new long[indices.Length];
        for (int i = 0; i < indices.Length; i++) starts[i] = (long)indices[i] * _trainSet.Stride;
        var (inputs, targets) = Windows(_trainTokens, torch.tensor(starts, device: _device));
        var logits = Model.forward(inputs);
        var loss = nn.functional.cross_entropy(logits.reshape(-1, ClassCount), targets.reshape(-1));
        loss.backward();
        return loss.item<float>() * (double)indices.Length;
    }

    public EvaluationResult Evaluate(int start, int count)
    {
        Model.eval();
        var confusion = new long[ClassCount * ClassCount];
        double lossSum = 0;
        using var noGrad = torch.no_grad();
        for (int batchStart = start; batchStart < start + count; batchStart += EvaluationBatchSize)
        {
            using var scope = torch.NewDisposeScope();
            int batchCount = Math.Min(EvaluationBatchSize, start + count - batchStart);
            var starts = torch.arange(batchStart, batchStart + batchCount, dtype: ScalarType.Int64, device: _device).mul_(_testSet.Stride);
            var (inputs, targets) = Windows(_testTokens, starts);
            var logits = Model.forward(inputs).reshape(-1, ClassCount);
            var labels = targets.reshape(-1);
            lossSum += nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).item<float>();
            Evaluator.AddToConfusion(confusion, labels, logits.argmax(1), ClassCount);
        }
        return new EvaluationResult(confusion, ClassCount, lossSum);
    }

    /// <summary>Inputs tokens[s .. s + T) and targets tokens[s + 1 .. s + T] for each start s: [n, T] each.</summary>
    private (Tensor Inputs, Tensor Targets) Windows(Tensor tokens, Tensor starts)
    {
        var positions = starts.unsqueeze(1).add(_offsets);
        var windows = tokens.index_select(0, positions.flatten()).view(positions.shape);
        long context = _offsets.shape[0] - 1;
        return (windows.narrow(1, 0, context), windows.narrow(1, 1, context));
    }

    public void Dispose()
    {
        _trainTokens.Dispose();
        _testTokens.Dispose();
        _offsets.Dispose();
        Model.Dispose();
    }
}
