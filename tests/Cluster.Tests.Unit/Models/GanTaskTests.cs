using Cluster.Sdk;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Worker.Tasks;
using Cluster.Worker.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Unit.Models;

/// <summary>
/// The GAN's batch: the discriminator's gradient is that of its own loss only (the generator's
/// backward pass must not leak into it), the generator's that of its loss through the
/// discriminator; the two groups are the two consecutive key ranges of the flat vector.
/// </summary>
[Trait("Tier", "unit")]
public sealed class GanTaskTests
{
    [Fact]
    public void One_batch_gives_each_network_the_gradient_of_its_own_loss()
    {
        var data = SyntheticDataset.Create();
        using var task = new GanTask((Dcgan)ModelZoo.Create("gan", seed: 3), data.Train.Take(64), data.Test.Take(32), seed: 3, torch.CPU);
        var gan = (Dcgan)task.Model;
        int[] batch = [.. Enumerable.Range(0, 16)];

        double loss = task.ComputeGradient(batch);
        var discriminatorGradient = Gradients(gan.Discriminator);
        var generatorGradient = Gradients(gan.Generator);

        // Reference: the discriminator's loss alone, on the same real images and the same generated ones.
        Assert.True(double.IsFinite(loss) && loss > 0);
        Assert.All(generatorGradient, g => Assert.True(g.abs().sum().item<float>() > 0, "a generator parameter got no gradient"));
        var (realLogits, fakeLogits) = ReplayDiscriminator(gan, batch);
        gan.zero_grad();
        nn.functional.binary_cross_entropy_with_logits(realLogits, torch.ones_like(realLogits))
            .add(nn.functional.binary_cross_entropy_with_logits(fakeLogits, torch.zeros_like(fakeLogits))).backward();
        foreach (var (ours, reference) in discriminatorGradient.Zip(Gradients(gan.Discriminator)))
            Assert.True(ours.allclose(reference, rtol: 1e-4, atol: 1e-6), "the discriminator's gradient is not that of its own loss");
    }

    [Fact]
    public void The_groups_are_the_generator_then_the_discriminator_as_consecutive_ranges()
    {
        var data = SyntheticDataset.Create();
        using var task = new GanTask((Dcgan)ModelZoo.Create("gan", seed: 3), data.Train.Take(8), data.Test.Take(8), seed: 3, torch.CPU);
        using var vector = new ParameterVector(task.Model);
        var layout = vector.Layout();
        var groups = ParameterGroupRanges.For(task, layout, new Protos.OptimizerConfig { Kind = "adam" }).ToList();

        Assert.Equal(["generator", "discriminator"], groups.Select(g => g.Name));
        long generatorElements = ((Dcgan)task.Model).Generator.parameters().Sum(p => p.numel());
        Assert.Equal((0L, generatorElements), (groups[0].Start, groups[0].Elements));
        Assert.Equal((generatorElements, vector.ElementCount - generatorElements), (groups[1].Start, groups[1].Elements));
    }

    [Fact]
    public void Evaluation_scores_as_many_generated_images_as_real_ones()
    {
        var data = SyntheticDataset.Create();
        using var task = new GanTask((Dcgan)ModelZoo.Create("gan", seed: 3), data.Train.Take(8), data.Test.Take(40), seed: 3, torch.CPU);
        EvaluationResult result = task.Evaluate(10, 30);
        Assert.Equal(2, result.ClassCount);
        Assert.Equal(30, result.Confusion[0] + result.Confusion[1]);
        Assert.Equal(30, result.Confusion[2] + result.Confusion[3]);
        Assert.True(double.IsFinite(result.LossSum) && result.LossSum > 0);
    }

    private static List<Tensor> Gradients(nn.Module module) => [.. module.parameters().Select(p => p.grad!.clone())];

    /// <summary>The discriminator's logits on the batch's real images and on the images the task generated for it (same seed rule).</summary>
    private static (Tensor Real, Tensor Fake) ReplayDiscriminator(Dcgan gan, int[] batch)
    {
        // ComputeGradient's forward passes again: its latent is drawn from (seed, first index, count) with this rule.
        gan.train();
        var data = SyntheticDataset.Create().Train.Take(64);
        using var bytes = torch.tensor(data.Pixels, dtype: ScalarType.Byte);
        var images = bytes.reshape(data.Count, 1, 28, 28).to(ScalarType.Float32).div(127.5).sub(1);
        var real = images.index_select(0, torch.tensor(batch.Select(i => (long)i).ToArray()));
        using var generator = new torch.Generator((ulong)(3L * 1_000_003 + batch[0] * 31L + batch.Length));
        var fake = gan.forward(torch.randn(new long[] { batch.Length, Dcgan.LatentSize }, generator: generator)).detach();
        return (gan.Discriminator.forward(real), gan.Discriminator.forward(fake));
    }
}
