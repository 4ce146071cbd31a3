using Cluster.Shared.Jobs;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// The built-in models, by name. The image models map a batch of images [N, C, H, W] to class
/// logits [N, classes]; the language models map token windows [N, T] to next-token logits
/// [N, T, vocabulary]. Weights are drawn from TorchSharp's default initialisers after
/// seeding, so the same seed gives the same initial model in every process.
/// </summary>
public static class ModelZoo
{
    public static nn.Module<Tensor, Tensor> Create(string name, long seed, int height = 28, int width = 28, int classCount = 10) =>
        Create(name, seed, ModelShape.Image(1, height, width, classCount));

    public static nn.Module<Tensor, Tensor> Create(string name, long seed, ModelShape shape)
    {
        torch.manual_seed(seed);
        return name switch
        {
            "mlp" => Mlp(shape.Channels * shape.Height * shape.Width, shape.ClassCount),
            "cnn" => Cnn(shape),
            "resnet" => new ResNet(shape.Channels, shape.Height, shape.Width, shape.ClassCount),
            "lstm" => new CharLstm(shape.ClassCount),
            "transformer" => new CharTransformer(shape.ClassCount, shape.Context),
            "gan" => new Dcgan(shape.Channels),
            _ => throw new ArgumentException(
                $"model: '{name}' is not a known model; expected one of {string.Join(", ", JobSpecification.KnownModels)}"),
        };
    }

    /// <summary>
    /// The name prefix of the model's head (its last layer), e.g. "fc2." for the cnn: the part
    /// that fine-tuning replaces when the new task has other classes.
    /// </summary>
    public static string HeadPrefix(nn.Module model)
    {
        string last = model.named_parameters().Last().name;
        int dot = last.LastIndexOf('.');
        return dot < 0 ? last : last[..(dot + 1)];
    }

    /// <summary>784-512-256-10 perceptron with ReLU.</summary>
    private static nn.Module<Tensor, Tensor> Mlp(int inputs, int classCount) => nn.Sequential(
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(inputs, 512)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(512, 256)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(256, classCount)));

    /// <summary>conv32-relu-pool, conv64-relu-pool, fc128-relu, fc10 (3x3 convolutions, same padding).</summary>
    private static nn.Module<Tensor, Tensor> Cnn(ModelShape shape) => nn.Sequential(
        ("conv1", nn.Conv2d(shape.Channels, 32, kernel_size: 3, padding: 1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(kernel_size: 2)),
        ("conv2", nn.Conv2d(32, 64, kernel_size: 3, padding: 1)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(kernel_size: 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64 * (shape.Height / 4) * (shape.Width / 4), 128)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(128, shape.ClassCount)));
}
