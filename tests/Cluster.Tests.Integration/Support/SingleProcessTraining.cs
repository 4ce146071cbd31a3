using Cluster.Shared.Jobs;
using Cluster.Shared.Sharding;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Worker.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Integration.Support;

/// <summary>
/// The reference every distributed scheme is compared with: plain TorchSharp in this process,
/// same seed and initial weights, one batch per step made of every rank's batch, torch.optim.
/// </summary>
public static class SingleProcessTraining
{
    /// <summary>Trains epoch 0 of <paramref name="spec"/> (which must have <paramref name="steps"/> steps); returns the flat parameters.</summary>
    public static float[] Train(JobSpecification spec, int steps)
    {
        torch.set_num_threads(1);
        var train = DatasetCatalog.Load(spec.Dataset, null).Train.Take(spec.TrainLimit);
        using var loader = new BatchLoader(train, torch.CPU);
        using var model = ModelZoo.Create(spec.Model, spec.Seed);
        var o = spec.Optimizer;
        using optim.Optimizer optimizer = o.Kind == "sgd"
            ? torch.optim.SGD(model.parameters(), o.LearningRate, o.Momentum, o.Dampening, o.WeightDecay, o.Nesterov)
            : torch.optim.Adam(model.parameters(), o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay);
        var plan = new EpochPlan(train.Count, spec.Seed, epoch: 0, spec.Workers, spec.BatchSize);
        Assert.Equal(steps, plan.StepCount);
        for (int step = 0; step < plan.StepCount; step++)
        {
            GradientStep.Compute(model, loader, plan.GlobalBatch(step));
            optimizer.step();
        }
        return Flatten(model);
    }

    /// <summary>A model's parameters as one flat vector, in named_parameters() order.</summary>
    public static float[] Flatten(nn.Module model)
    {
        using var vector = new ParameterVector(model);
        var bytes = new byte[vector.ByteCount];
        vector.ReadParameters(bytes);
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();
    }
}
