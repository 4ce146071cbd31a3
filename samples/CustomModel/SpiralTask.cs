using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace CustomModel;

/// <summary>
/// A task of the user's own, trained by the cluster's workers:
/// <c>cluster local --assembly CustomModel.dll --type CustomModel.SpiralTask</c>. The worker
/// builds it with the job's context, asks it for gradients of the batches the epoch plan gives
/// this rank, and for a confusion matrix over its slice of the test set.
/// </summary>
public sealed class SpiralTask : ITrainingTask
{
    private const int TrainCountDefault = 3000;
    private const int TestCountDefault = 600;

    private readonly Tensor _trainPoints, _trainLabels, _testPoints, _testLabels;

    public SpiralTask(TaskContext context)
    {
        int trainCount = context.TrainLimit > 0 ? context.TrainLimit : TrainCountDefault;
        int testCount = context.TestLimit > 0 ? context.TestLimit : TestCountDefault;
        (_trainPoints, _trainLabels) = Spirals.Generate(trainCount, seed: 1);
        (_testPoints, _testLabels) = Spirals.Generate(testCount, seed: 2);
        Model = Spirals.Classifier(context.Seed);
        Model.to(context.Device);
        (TrainCount, TestCount) = (trainCount, testCount);
        _device = context.Device;
    }

    private readonly Device _device;

    public nn.Module<Tensor, Tensor> Model { get; }
    public int TrainCount { get; }
    public int TestCount { get; }
    public int ClassCount => Spirals.ClassCount;

    public double ComputeGradient(ReadOnlySpan<int> indices)
    {
        Model.train();
        Model.zero_grad();
        if (indices.Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var index = torch.tensor(indices.ToArray().Select(i => (long)i).ToArray());
        var loss = nn.functional.cross_entropy(
            Model.forward(_trainPoints.index_select(0, index).to(_device)), _trainLabels.index_select(0, index).to(_device));
        loss.backward();
        return loss.item<float>() * (double)indices.Length;
    }

    public EvaluationResult Evaluate(int start, int count)
    {
        Model.eval();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var logits = Model.forward(_testPoints.narrow(0, start, count).to(_device));
        var labels = _testLabels.narrow(0, start, count).to(_device);
        double lossSum = nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).item<float>();
        var confusion = new long[ClassCount * ClassCount];
        long[] truth = labels.cpu().data<long>().ToArray(), predicted = logits.argmax(1).cpu().data<long>().ToArray();
        for (int i = 0; i < count; i++) confusion[truth[i] * ClassCount + predicted[i]]++;
        return new EvaluationResult(confusion, ClassCount, lossSum);
    }

    public void Dispose()
    {
        foreach (var tensor in new[] { _trainPoints, _trainLabels, _testPoints, _testLabels }) tensor.Dispose();
        Model.Dispose();
    }
}
