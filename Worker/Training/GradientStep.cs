using Cluster.Worker.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Training;

/// <summary>Forward and backward of one batch: leaves the mean cross-entropy gradient in the model's .grad.</summary>
public static class GradientStep
{
    /// <summary>Returns the summed (not mean) loss of the batch, 0 for an empty batch.</summary>
    public static double Compute(nn.Module<Tensor, Tensor> model, BatchLoader loader, ReadOnlySpan<int> indices)
    {
        model.train();
        model.zero_grad();
        if (indices.Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var (inputs, labels) = loader.Batch(indices);
        var loss = nn.functional.cross_entropy(model.forward(inputs), labels);
        loss.backward();
        return loss.item<float>() * (double)indices.Length;
    }
}
