using System.Globalization;
using Cluster.Sdk;
using Cluster.Worker.Data;
using Cluster.Worker.Imaging;
using Cluster.Worker.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>
/// A DCGAN trained on the images of a dataset (labels unused). One batch gives both networks'
/// gradients on the same parameter version: the discriminator's BCE on the real images (target
/// 1) and on generated ones (target 0, the generator detached), and the generator's BCE of
/// the discriminator's verdict on its images against target 1 (the discriminator frozen).
/// The two parameter groups are updated with their own optimizers on the servers. Evaluation
/// counts the discriminator's decisions on real test images and as many generated ones as a
/// 2-class confusion matrix (class 1: real), so the job's accuracy is the discriminator's.
/// </summary>
public sealed class GanTask : ITrainingTask, IParameterGroupTask, IArtifactTask
{
    private const int EvaluationBatchSize = 500;
    private const int GridSide = 8;
    private const int GridPadding = 2;
    public const int GridPixels = GridSide * Dcgan.ImageSize + (GridSide + 1) * GridPadding;

    private readonly Dcgan _gan;
    private readonly Tensor _trainImages;
    private readonly Tensor _testImages;
    private readonly Device _device;
    private readonly long _seed;
    private double _generatorLossSum;
    private double _discriminatorLossSum;
    private long _evaluated;
    private long[] _confusion = new long[4];

    public GanTask(Dcgan gan, ImageDataset train, ImageDataset test, long seed, Device device)
    {
        if (train.Height != Dcgan.ImageSize || train.Width != Dcgan.ImageSize)
            throw new ArgumentException($"dataset: {train.Height} x {train.Width} images; the gan generates {Dcgan.ImageSize} x {Dcgan.ImageSize}");
        (_gan, _device, _seed) = (gan, device, seed);
        _trainImages = Images(train);
        _testImages = Images(test);
        ClassCount = 2;
    }

    public nn.Module<Tensor, Tensor> Model => _gan;
    public int TrainCount => (int)_trainImages.shape[0];
    public int TestCount => (int)_testImages.shape[0];
    public int ClassCount { get; }

    public IReadOnlyList<ParameterGroupSpec> ParameterGroups { get; } =
        [new("generator", Dcgan.GeneratorPrefix), new("discriminator", Dcgan.DiscriminatorPrefix)];

    public double ComputeGradient(ReadOnlySpan<int> indices)
    {
        _gan.train();
        _gan.zero_grad();
        if (indices.Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        var positions = new long[indices.Length];
        for (int i = 0; i < indices.Length; i++) positions[i] = indices[i];
        var real = _trainImages.index_select(0, torch.tensor(positions)).to(_device);
        // The noise depends on the job's seed and the batch, so a rerun draws the same.
        var fake = _gan.forward(Latent(indices.Length, _seed * 1_000_003 + indices[0] * 31L + indices.Length));

        var discriminator = _gan.Discriminator;
        var realLogits = discriminator.forward(real);
        var fakeLogits = discriminator.forward(fake.detach());
        var discriminatorLoss = Bce(realLogits, 1f).add(Bce(fakeLogits, 0f));
        discriminatorLoss.backward();

        foreach (var parameter in discriminator.parameters()) parameter.requires_grad = false;
        var generatorLoss = Bce(discriminator.forward(fake), 1f);
        generatorLoss.backward();
        foreach (var parameter in discriminator.parameters()) parameter.requires_grad = true;

        double d = discriminatorLoss.item<float>(), g = generatorLoss.item<float>();
        if (!double.IsFinite(d) || !double.IsFinite(g))
            throw new InvalidOperationException($"gan: training diverged: discriminator loss {d}, generator loss {g}; expected finite losses");
        return (d + g) * indices.Length;
    }

    public EvaluationResult Evaluate(int start, int count)
    {
        GenerateMode();
        var confusion = new long[4];
        double discriminatorLoss = 0, generatorLoss = 0;
        using var noGrad = torch.no_grad();
        for (int batchStart = start; batchStart < start + count; batchStart += EvaluationBatchSize)
        {
            using var scope = torch.NewDisposeScope();
            int n = Math.Min(EvaluationBatchSize, start + count - batchStart);
            var realLogits = _gan.Discriminator.forward(_testImages.narrow(0, batchStart, n).to(_device));
            var fakeLogits = _gan.Discriminator.forward(_gan.forward(Latent(n, -(_seed * 1_000_003 + batchStart) - 1)));
            discriminatorLoss += SumBce(realLogits, 1f) + SumBce(fakeLogits, 0f);
            generatorLoss += SumBce(fakeLogits, 1f);
            long realAsReal = realLogits.gt(0).sum().item<long>(), fakeAsReal = fakeLogits.gt(0).sum().item<long>();
            confusion[0] += n - fakeAsReal;   // fake judged fake
            confusion[1] += fakeAsReal;       // fake judged real
            confusion[2] += n - realAsReal;   // real judged fake
            confusion[3] += realAsReal;       // real judged real
        }
        (_discriminatorLossSum, _generatorLossSum, _evaluated, _confusion) = (discriminatorLoss, generatorLoss, count, confusion);
        if (!double.IsFinite(discriminatorLoss) || !double.IsFinite(generatorLoss))
            throw new InvalidOperationException($"gan: evaluation diverged: discriminator loss {discriminatorLoss}, generator loss {generatorLoss}; expected finite losses");
        return new EvaluationResult(confusion, ClassCount, discriminatorLoss);
    }

    /// <summary>
    /// Writes an 8 x 8 grid of generated images (from a latent drawn from the job's seed, the
    /// same every epoch) as samples-epoch-N.png, and appends this rank's evaluation (the
    /// discriminator's loss and its accuracy on real and on generated images, the generator's
    /// loss) to gan-losses.csv.
    /// </summary>
    public void WriteArtifacts(string directory, int epoch)
    {
        using (var scope = torch.NewDisposeScope())
        using (var noGrad = torch.no_grad())
        {
            GenerateMode();
            var images = _gan.forward(Latent(GridSide * GridSide, _seed)).cpu();
            var pixels = Grid(images.add(1).mul(127.5).clamp(0, 255).to(ScalarType.Byte).data<byte>().ToArray());
            File.WriteAllBytes(Path.Combine(directory, $"samples-epoch-{epoch + 1}.png"), PngEncoder.EncodeGray(pixels, GridPixels, GridPixels));
        }
        string losses = Path.Combine(directory, "gan-losses.csv");
        if (epoch == 0 || !File.Exists(losses)) File.WriteAllText(losses, "epoch,discriminator_loss,generator_loss,discriminator_accuracy_real,discriminator_accuracy_fake\n");
        double scale = Math.Max(1, _evaluated);
        File.AppendAllText(losses, string.Create(CultureInfo.InvariantCulture,
            $"{epoch + 1},{_discriminatorLossSum / (2 * scale):F6},{_generatorLossSum / scale:F6},{_confusion[3] / scale:F4},{_confusion[0] / scale:F4}\n"));
    }

    /// <summary>
    /// The discriminator in evaluation mode, the generator normalising with its batch's
    /// statistics (as it trains): the running statistics lag far behind a generator that
    /// changes every step.
    /// </summary>
    private void GenerateMode()
    {
        _gan.eval();
        _gan.Generator.train();
    }

    private static byte[] Grid(byte[] images)
    {
        const int size = Dcgan.ImageSize;
        var grid = new byte[GridPixels * GridPixels];
        for (int tile = 0; tile < GridSide * GridSide; tile++)
        {
            int top = GridPadding + tile / GridSide * (size + GridPadding), left = GridPadding + tile % GridSide * (size + GridPadding);
            for (int y = 0; y < size; y++)
                Array.Copy(images, tile * size * size + y * size, grid, (top + y) * GridPixels + left, size);
        }
        return grid;
    }

    private Tensor Latent(int count, long seed)
    {
        using var generator = new Generator((ulong)seed);
        return torch.randn(new long[] { count, Dcgan.LatentSize }, generator: generator).to(_device);
    }

    private static Tensor Bce(Tensor logits, float target) =>
        nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target));

    private static double SumBce(Tensor logits, float target) =>
        nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction: nn.Reduction.Sum).item<float>();

    /// <summary>The dataset's pixels scaled to [-1, 1] (the generator's tanh range), on the CPU.</summary>
    private static Tensor Images(ImageDataset dataset)
    {
        using var bytes = torch.tensor(dataset.Pixels, dtype: ScalarType.Byte);
        return bytes.reshape(dataset.Count, dataset.Channels, dataset.Height, dataset.Width).to(ScalarType.Float32).div_(127.5).sub_(1);
    }

    public void Dispose()
    {
        _trainImages.Dispose();
        _testImages.Dispose();
        _gan.Dispose();
    }
}
