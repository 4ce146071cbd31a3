using Cluster.Shared.Jobs;
using Cluster.Shared.Tuning;

namespace Cluster.Tests.Unit.Tuning;

[Trait("Tier", "unit")]
public sealed class SweepPlanTests
{
    private static readonly JobSpecification Base = new() { Model = "mlp", Epochs = 1, Seed = 7 };

    [Fact]
    public void A_grid_runs_every_combination_once_and_keeps_the_rest_of_the_job()
    {
        var trials = SweepPlan.Trials(Base, new SweepSpace([1e-3, 1e-2], [32, 64, 128], [0, 1e-4]), "grid", 0);

        Assert.Equal(12, trials.Count);
        Assert.Equal(Enumerable.Range(1, 12), trials.Select(t => t.Number));
        Assert.Equal(12, trials.Select(t => (t.Spec.Optimizer.LearningRate, t.Spec.BatchSize, t.Spec.Optimizer.WeightDecay)).Distinct().Count());
        Assert.All(trials, t => Assert.Equal(("mlp", 1, 7L, "adam"), (t.Spec.Model, t.Spec.Epochs, t.Spec.Seed, t.Spec.Optimizer.Kind)));
        Assert.Equal((1e-3, 32, 0.0), (trials[0].Spec.Optimizer.LearningRate, trials[0].Spec.BatchSize, trials[0].Spec.Optimizer.WeightDecay));
    }

    [Fact]
    public void A_random_search_is_seeded_and_draws_within_the_given_values()
    {
        var space = new SweepSpace([1e-4, 1e-2], [32, 64], [0, 1e-3]);
        var first = SweepPlan.Trials(Base, space, "random", 20);
        var again = SweepPlan.Trials(Base, space, "random", 20);

        Assert.Equal(20, first.Count);
        Assert.Equal(first.Select(t => t.Spec), again.Select(t => t.Spec));
        Assert.All(first, t => Assert.InRange(t.Spec.Optimizer.LearningRate, 1e-4, 1e-2));
        Assert.All(first, t => Assert.Contains(t.Spec.BatchSize, new[] { 32, 64 }));
        Assert.True(first.Select(t => t.Spec.Optimizer.LearningRate).Distinct().Count() > 15, "learning rates are not drawn");
    }

    [Theory]
    [InlineData("bayes", 4, "search: 'bayes' is not a search")]
    [InlineData("random", 0, "trials: 0 is out of range")]
    public void Bad_sweeps_are_refused_naming_the_field(string search, int trials, string expected)
    {
        var error = Assert.Throws<ArgumentException>(() => SweepPlan.Trials(Base, new SweepSpace([1e-3], [32], [0]), search, trials));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Classifiers_rank_by_accuracy_language_models_by_loss_failures_last()
    {
        (string Name, bool Ok, double Accuracy, double Loss)[] trials =
            [("a", true, 0.80, 0.5), ("b", false, 0.99, 0.1), ("c", true, 0.85, 0.6), ("d", true, 0.70, 0.4)];

        var byAccuracy = SweepPlan.Rank(trials, t => (t.Ok, t.Accuracy, t.Loss), languageModel: false);
        var byLoss = SweepPlan.Rank(trials, t => (t.Ok, t.Accuracy, t.Loss), languageModel: true);

        Assert.Equal(["c", "a", "d", "b"], byAccuracy.Select(t => t.Name));
        Assert.Equal(["d", "a", "c", "b"], byLoss.Select(t => t.Name));
    }
}
