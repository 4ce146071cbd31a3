using Cluster.Sdk.Distributed;
using Cluster.Shared.Optimizers;
using CustomModel;
using TorchSharp;

// A training loop of the user's own, made data-parallel by DistributedOptimizer. Started by
// `cluster launch --workers N -- dotnet CustomModel.dll [EPOCHS]`, each rank trains its slice
// of every global batch; the parameter servers average the gradients and apply Adam.
const int TrainCount = 3000, TestCount = 600, BatchPerRank = 32;
int epochs = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 3;
if (Environment.GetEnvironmentVariable("CLUSTER_THREADS") is { } threads) torch.set_num_threads(int.Parse(threads, System.Globalization.CultureInfo.InvariantCulture));

var (trainPoints, trainLabels) = Spirals.Generate(TrainCount, seed: 1);
var (testPoints, testLabels) = Spirals.Generate(TestCount, seed: 2);
using var model = Spirals.Classifier(seed: 1);
using var optimizer = DistributedOptimizer.FromEnvironment(model, new OptimizerSettings { Kind = "adam", LearningRate = 1e-2 });
await optimizer.BroadcastParametersAsync();

int globalBatch = BatchPerRank * optimizer.WorldSize;
for (int epoch = 1; epoch <= epochs; epoch++)
{
    // The same permutation on every rank (seeded by the epoch); rank r takes its slice of each global batch.
    var order = torch.randperm(TrainCount, generator: new torch.Generator((ulong)epoch));
    double lossSum = 0;
    int samples = 0;
    for (int start = 0; start < TrainCount; start += globalBatch)
    {
        using var scope = torch.NewDisposeScope();
        int mine = Math.Clamp(TrainCount - start - optimizer.Rank * BatchPerRank, 0, BatchPerRank);
        model.train();
        model.zero_grad();
        if (mine > 0)
        {
            var index = order.narrow(0, start + optimizer.Rank * BatchPerRank, mine);
            var loss = torch.nn.functional.cross_entropy(model.forward(trainPoints.index_select(0, index)), trainLabels.index_select(0, index));
            loss.backward();
            lossSum += loss.item<float>() * mine;
            samples += mine;
        }
        await optimizer.StepAsync(mine);
    }
    model.eval();
    using (torch.no_grad())
    {
        var predicted = model.forward(testPoints).argmax(1);
        double accuracy = predicted.eq(testLabels).to(torch.float32).mean().item<float>();
        Console.WriteLine(FormattableString.Invariant($"rank {optimizer.Rank} epoch {epoch} train-loss {lossSum / Math.Max(1, samples):F4} test-accuracy {accuracy:F4} step {optimizer.Step}"));
    }
}
