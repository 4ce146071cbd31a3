using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// DCGAN for 28x28 single-channel images. The generator maps a latent vector [N, LatentSize]
/// through transposed convolutions (1 → 7 → 14 → 28 pixels, batch norm and ReLU between, tanh
/// out) to images in [-1, 1]; the discriminator maps images through strided convolutions
/// (28 → 14 → 7, leaky ReLU) to one real-vs-fake logit [N, 1]. The module's parameters are the
/// generator's, then the discriminator's: two consecutive key ranges of the flat vector, which
/// the parameter servers update as two parameter groups. <c>forward</c> generates images.
/// </summary>
public sealed class Dcgan : nn.Module<Tensor, Tensor>
{
    public const int LatentSize = 64;
    public const int ImageSize = 28;
    public const string GeneratorPrefix = "generator.";
    public const string DiscriminatorPrefix = "discriminator.";

    public Dcgan(int channels = 1) : base(nameof(Dcgan))
    {
        generator = nn.Sequential(
            ("unproject", nn.ConvTranspose2d(LatentSize, 128, kernel_size: 7, stride: 1, padding: 0, bias: false)),
            ("bn1", nn.BatchNorm2d(128)),
            ("relu1", nn.ReLU()),
            ("up1", nn.ConvTranspose2d(128, 64, kernel_size: 4, stride: 2, padding: 1, bias: false)),
            ("bn2", nn.BatchNorm2d(64)),
            ("relu2", nn.ReLU()),
            ("up2", nn.ConvTranspose2d(64, channels, kernel_size: 4, stride: 2, padding: 1)),
            ("tanh", nn.Tanh()));
        discriminator = nn.Sequential(
            ("down1", nn.Conv2d(channels, 64, kernel_size: 4, stride: 2, padding: 1)),
            ("lrelu1", nn.LeakyReLU(0.2)),
            ("down2", nn.Conv2d(64, 128, kernel_size: 4, stride: 2, padding: 1)),
            ("lrelu2", nn.LeakyReLU(0.2)),
            ("flatten", nn.Flatten()),
            ("logit", nn.Linear(128 * 7 * 7, 1)));
        RegisterComponents();
    }

    // Field names are the parameter-name prefixes ("generator.", "discriminator.").
    private readonly Sequential generator;
    private readonly Sequential discriminator;

    public nn.Module<Tensor, Tensor> Generator => generator;
    public nn.Module<Tensor, Tensor> Discriminator => discriminator;

    /// <summary>Images [N, C, 28, 28] in [-1, 1] from latent vectors [N, LatentSize].</summary>
    public override Tensor forward(Tensor latent) => generator.forward(latent.view(latent.shape[0], LatentSize, 1, 1));

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            generator.Dispose();
            discriminator.Dispose();
        }
        base.Dispose(disposing);
    }
}
