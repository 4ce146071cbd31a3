using Cluster.Shared.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Unit.Optimizers;

/// <summary>
/// The parameter server's optimizers against TorchSharp's own torch.optim fed the same
/// gradients: equal within 1e-6 relative (max |difference| / max |parameter|) after 100 steps.
/// </summary>
[Trait("Tier", "unit")]
public sealed class OptimizerEquivalenceTests
{
    private const int ElementCount = 4096;
    private const int Steps = 100;
    private const double RelativeTolerance = 1e-6;

    public static TheoryData<OptimizerSettings> Settings() =>
    [
        new OptimizerSettings { Kind = "adam", LearningRate = 1e-3 },
        new OptimizerSettings { Kind = "adam", LearningRate = 3e-3, Beta1 = 0.8, Beta2 = 0.99, Epsilon = 1e-6, WeightDecay = 0.01 },
        new OptimizerSettings { Kind = "adamw", LearningRate = 1e-3, WeightDecay = 0.01 },
        new OptimizerSettings { Kind = "sgd", LearningRate = 0.05 },
        new OptimizerSettings { Kind = "sgd", LearningRate = 0.01, Momentum = 0.9 },
        new OptimizerSettings { Kind = "sgd", LearningRate = 0.01, Momentum = 0.9, Dampening = 0.1, WeightDecay = 1e-3 },
        new OptimizerSettings { Kind = "sgd", LearningRate = 0.01, Momentum = 0.9, Nesterov = true, WeightDecay = 5e-4 },
    ];

    [Theory]
    [MemberData(nameof(Settings))]
    public void Matches_torch_optim_over_100_steps(OptimizerSettings settings)
    {
        var random = new Random(7);
        var optimizer = TrainAgainstTorch(settings, random, Steps, (step, i) => (float)((random.NextDouble() * 2 - 1) * (1 + i % 7)));
        Assert.Equal(Steps, optimizer.StepCount);
    }

    public static TheoryData<OptimizerSettings> DecayingSettings() =>
    [
        // beta2 0.9: the second moment too decays through the subnormals within the test's steps.
        new OptimizerSettings { Kind = "adam", LearningRate = 1e-3, Beta2 = 0.9 },
        new OptimizerSettings { Kind = "adamw", LearningRate = 1e-3, WeightDecay = 0.01 },
        new OptimizerSettings { Kind = "sgd", LearningRate = 0.01, Momentum = 0.9 },
    ];

    /// <summary>
    /// Half the elements get gradients for 5 steps and then only zeros (a border pixel, an unused
    /// token): their state decays toward zero for 1,000 steps, through the range where it would be
    /// subnormal (each such multiply a microcode assist on x86). It is flushed before that: no
    /// state element is ever subnormal, and the weights stay with torch.optim's.
    /// </summary>
    [Theory]
    [MemberData(nameof(DecayingSettings))]
    public void State_decaying_to_zero_never_turns_subnormal_and_matches_torch_optim(OptimizerSettings settings)
    {
        const int steps = 1000;
        var random = new Random(11);
        int subnormalSteps = 0;
        TrainAgainstTorch(settings, random, steps, (step, i) => i % 2 == 0 || step < 5 ? (float)(random.NextDouble() * 2 - 1) : 0f,
            optimizer => { if (optimizer.StateBuffers.Any(buffer => buffer.Values.Any(float.IsSubnormal))) subnormalSteps++; });
        Assert.True(subnormalSteps == 0, $"optimizer state held subnormal floats after {subnormalSteps} of {steps} steps; expected none");
    }

    /// <summary>
    /// Trains random initial parameters for <paramref name="steps"/> steps with our optimizer and
    /// with torch.optim, both given gradient element i of each step as
    /// <paramref name="gradientAt"/>(step, i) (<paramref name="afterStep"/> sees ours after each
    /// step), and asserts they end within <see cref="RelativeTolerance"/> and away from the start.
    /// </summary>
    private static IOptimizer TrainAgainstTorch(OptimizerSettings settings, Random random, int steps, Func<int, int, float> gradientAt,
        Action<IOptimizer>? afterStep = null)
    {
        float[] initial = Enumerable.Range(0, ElementCount).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var ours = (float[])initial.Clone();
        var optimizer = settings.Create(ElementCount);
        using var parameter = new TorchSharp.Modules.Parameter(torch.tensor(initial));
        using var reference = CreateTorchOptimizer(settings, parameter);
        var gradient = new float[ElementCount];
        for (int step = 0; step < steps; step++)
        {
            for (int i = 0; i < ElementCount; i++) gradient[i] = gradientAt(step, i);
            using (var scope = torch.NewDisposeScope())
            {
                reference.zero_grad();
                // d/dp sum(p * g) = g: hands torch exactly the same gradient.
                (parameter * torch.tensor(gradient)).sum().backward();
                reference.step();
            }
            optimizer.Step(ours, (float[])gradient.Clone());
            afterStep?.Invoke(optimizer);
        }

        float[] expected = parameter.data<float>().ToArray();
        // Relative to the parameters' scale: elements that pass close to zero cannot keep a
        // per-element relative error, whatever the order of float operations.
        double largestDifference = 0, largestMagnitude = 0;
        for (int i = 0; i < ElementCount; i++)
        {
            largestDifference = Math.Max(largestDifference, Math.Abs(ours[i] - expected[i]));
            largestMagnitude = Math.Max(largestMagnitude, Math.Abs(expected[i]));
        }
        double relative = largestDifference / largestMagnitude;
        Assert.True(relative <= RelativeTolerance,
            $"largest difference {largestDifference:E3} is {relative:E3} of the largest parameter; expected <= {RelativeTolerance:E0}");
        Assert.NotEqual(initial, ours);
        return optimizer;
    }

    [Theory]
    [MemberData(nameof(Settings))]
    public void Stepping_partition_by_partition_equals_stepping_the_whole_vector(OptimizerSettings settings)
    {
        var random = new Random(3);
        float[] whole = Enumerable.Range(0, 1000).Select(_ => (float)random.NextDouble()).ToArray();
        float[] partitioned = (float[])whole.Clone();
        var wholeOptimizer = settings.Create(whole.Length);
        var partitionedOptimizer = settings.Create(whole.Length);
        const int partition = 300; // the last partition is shorter, and not a multiple of the SIMD width
        for (long step = 1; step <= 20; step++)
        {
            float[] gradient = Enumerable.Range(0, whole.Length).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
            wholeOptimizer.Step(whole, (float[])gradient.Clone());
            for (int offset = 0; offset < whole.Length; offset += partition)
            {
                int length = Math.Min(partition, whole.Length - offset);
                partitionedOptimizer.StepRange(offset, partitioned.AsSpan(offset, length), gradient.AsSpan(offset, length), step);
            }
        }
        Assert.Equal(whole, partitioned);
    }

    private static optim.Optimizer CreateTorchOptimizer(OptimizerSettings s, TorchSharp.Modules.Parameter parameter) => s.Kind switch
    {
        "adam" => torch.optim.Adam([parameter], s.LearningRate, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay),
        "adamw" => torch.optim.AdamW([parameter], s.LearningRate, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay),
        _ => torch.optim.SGD([parameter], s.LearningRate, s.Momentum, s.Dampening, s.WeightDecay, s.Nesterov),
    };
}
