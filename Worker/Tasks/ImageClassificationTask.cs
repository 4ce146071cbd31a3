using Cluster.Worker.Data;
using Cluster.Worker.Evaluation;
using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>Images in, class logits out; loss cross-entropy, MSE or BCE (see <see cref="Losses"/>).</summary>
public sealed class ImageClassificationTask : ITrainingTask
{
    private readonly BatchLoader _train;
    private readonly BatchLoader _test;
    private readonly Losses _loss;

    public ImageClassificationTask(nn.Module<Tensor, Tensor> model, ImageDataset train, ImageDataset test, Losses loss, Device device)
    {
        Model = model;
        _train = new BatchLoader(train, device);
        _test = new BatchLoader(test, device);
        _loss = loss;
        ClassCount = train.ClassCount;
    }

    public nn.Module<Tensor, Tensor> Model { get; }
    public int TrainCount => _train.Count;
    public int TestCount => _test.Count;
    public int ClassCount { get; }

    public double ComputeGradient(ReadOnlySpan<int> indices)
    {
        Model.train();
        Model.zero_grad();
        if (indices.Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var (inputs, labels) = _train.Batch(indices);
        var loss = _loss.Mean(Model.forward(inputs), labels);
        loss.backward();
        return loss.item<float>() * (double)indices.Length;
    }

    public EvaluationResult Evaluate(int start, int count) =>
        Evaluator.Evaluate(Model, _test, start, count, ClassCount, _loss.Sum);

    public void Dispose()
    {
        _train.Dispose();
        _test.Dispose();
        Model.Dispose();
    }
}
