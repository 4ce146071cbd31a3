using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// A small residual network (He et al. 2016, at the cnn's size): a 3x3 stem of 32 channels
/// with batch norm and 2x2 max pooling, two basic residual blocks (32 channels, then 64 at half
/// the resolution, with a 1x1 projection shortcut), and a linear head over the final feature
/// map (7x7x64 for 28x28 inputs; the cnn's 64-channel map feeds a dense layer too, and keeping
/// the spatial layout learns faster in few epochs than global average pooling). Batch-norm running statistics are buffers, kept per rank (each
/// rank sees batches of the same distribution) and saved in checkpoints with the weights.
/// </summary>
public sealed class ResNet : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d stem;
    private readonly BatchNorm2d stem_bn;
    private readonly ResidualBlock layer1;
    private readonly ResidualBlock layer2;
    private readonly Linear fc;

    public ResNet(int channels, int height, int width, int classCount) : base(nameof(ResNet))
    {
        stem = nn.Conv2d(channels, 32, kernel_size: 3, padding: 1, bias: false);
        stem_bn = nn.BatchNorm2d(32);
        layer1 = new ResidualBlock(32, 32, stride: 1);
        layer2 = new ResidualBlock(32, 64, stride: 2);
        fc = nn.Linear(64 * ((height / 2 + 1) / 2) * ((width / 2 + 1) / 2), classCount);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = nn.functional.max_pool2d(nn.functional.relu(stem_bn.call(stem.call(input))), 2);
        x = layer2.call(layer1.call(x));
        return fc.call(x.flatten(1));
    }
}

/// <summary>Two 3x3 conv-batch-norm layers plus the input (projected by a 1x1 conv when the shape changes), then ReLU.</summary>
public sealed class ResidualBlock : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly Conv2d conv2;
    private readonly BatchNorm2d bn2;
    private readonly nn.Module<Tensor, Tensor> shortcut;

    public ResidualBlock(int inChannels, int outChannels, int stride) : base(nameof(ResidualBlock))
    {
        conv1 = nn.Conv2d(inChannels, outChannels, kernel_size: 3, stride: stride, padding: 1, bias: false);
        bn1 = nn.BatchNorm2d(outChannels);
        conv2 = nn.Conv2d(outChannels, outChannels, kernel_size: 3, padding: 1, bias: false);
        bn2 = nn.BatchNorm2d(outChannels);
        shortcut = stride == 1 && inChannels == outChannels
            ? nn.Identity()
            : nn.Sequential(
                ("conv", nn.Conv2d(inChannels, outChannels, kernel_size: 1, stride: stride, bias: false)),
                ("bn", nn.BatchNorm2d(outChannels)));
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = nn.functional.relu(bn1.call(conv1.call(input)));
        x = bn2.call(conv2.call(x));
        return nn.functional.relu(x.add_(shortcut.call(input)));
    }
}
