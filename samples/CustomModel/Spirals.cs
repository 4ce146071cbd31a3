using TorchSharp;
using static TorchSharp.torch;

namespace CustomModel;

/// <summary>
/// Three interleaved spiral arms in the plane, one class per arm, with a little noise: a small
/// data set no linear model separates. Points are drawn from a fixed seed, so every rank and
/// every process sees the same data.
/// </summary>
public static class Spirals
{
    public const int ClassCount = 3;

    /// <summary>Points [count, 2] float32 and labels [count] int64.</summary>
    public static (Tensor Points, Tensor Labels) Generate(int count, int seed)
    {
        var random = new Random(seed);
        var points = new float[count * 2];
        var labels = new long[count];
        for (int i = 0; i < count; i++)
        {
            int arm = i % ClassCount;
            double radius = random.NextDouble();
            double angle = arm * 2 * Math.PI / ClassCount + radius * 4 + random.NextDouble() * 0.3;
            points[2 * i] = (float)(radius * Math.Cos(angle));
            points[2 * i + 1] = (float)(radius * Math.Sin(angle));
            labels[i] = arm;
        }
        return (torch.tensor(points).reshape(count, 2), torch.tensor(labels));
    }

    /// <summary>2-64-64-3 perceptron with ReLU, its weights drawn from <paramref name="seed"/>.</summary>
    public static nn.Module<Tensor, Tensor> Classifier(long seed)
    {
        torch.manual_seed(seed);
        return nn.Sequential(
            ("fc1", nn.Linear(2, 64)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(64, 64)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(64, ClassCount)));
    }
}
