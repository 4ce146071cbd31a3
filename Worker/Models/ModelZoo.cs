using Cluster.Shared.Jobs;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// The built-in models, by name. Every model maps a batch of images [N, 1, H, W] to class
/// logits [N, classes]. Weights are drawn from TorchSharp's default initialisers after
/// seeding, so the same seed gives the same initial model in every process.
/// </summary>
public static class ModelZoo
{
    public static nn.Module<Tensor, Tensor> Create(string name, long seed, int height = 28, int width = 28, int classCount = 10)
    {
        torch.manual_seed(seed);
        return name switch
        {
            "mlp" => Mlp(height * width, classCount),
            "cnn" => Cnn(height, width, classCount),
            _ => throw new ArgumentException(
                $"model: '{name}' is not a known model; expected one of {string.Join(", ", JobSpecification.KnownModels)}"),
        };
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
    private static nn.Module<Tensor, Tensor> Cnn(int height, int width, int classCount) => nn.Sequential(
        ("conv1", nn.Conv2d(1, 32, kernel_size: 3, padding: 1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(kernel_size: 2)),
        ("conv2", nn.Conv2d(32, 64, kernel_size: 3, padding: 1)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(kernel_size: 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64 * (height / 4) * (width / 4), 128)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(128, classCount)));
}
