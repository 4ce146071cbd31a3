using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.AllReduce;

/// <summary>
/// The allreduce trainer serves the reduced gradient it applied to a member that is one step
/// behind, without copying it first: that needs the optimizers to leave the gradient unchanged.
/// </summary>
[Trait("Tier", "unit")]
public sealed class OptimizerGradientContractTests
{
    [Theory]
    [InlineData("adam")]
    [InlineData("adamw")]
    [InlineData("sgd")]
    public void A_step_leaves_the_gradient_unchanged(string kind)
    {
        var settings = new OptimizerSettings { Kind = kind, Momentum = kind == "sgd" ? 0.9 : 0, WeightDecay = 0.01 };
        var random = new Random(3);
        float[] parameters = Enumerable.Range(0, 1003).Select(_ => (float)random.NextDouble()).ToArray();
        float[] gradient = Enumerable.Range(0, 1003).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        float[] before = (float[])gradient.Clone();
        var optimizer = settings.Create(parameters.Length);

        optimizer.Step(parameters, gradient);
        optimizer.Step(parameters, gradient);

        Assert.Equal(before, gradient);
    }
}
