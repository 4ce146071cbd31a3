using Cluster.Shared.Jobs;

namespace Cluster.Shared.Tuning;

/// <summary>The hyperparameter values a sweep draws its trials from.</summary>
public sealed record SweepSpace(IReadOnlyList<double> LearningRates, IReadOnlyList<int> BatchSizes, IReadOnlyList<double> WeightDecays);

/// <summary>One trial: its 1-based number and the job it runs.</summary>
public sealed record Trial(int Number, JobSpecification Spec);

/// <summary>
/// Hyperparameter search as plain logic: grid search (every combination, in order) or random
/// search (learning rate log-uniform between the smallest and largest given, batch size and
/// weight decay drawn from the given values; seeded by the job's seed), and the ranking of
/// finished trials by the validation metric: accuracy (higher first) for classifiers, loss
/// (lower first) for language models; failed trials last.
/// </summary>
public static class SweepPlan
{
    public static readonly IReadOnlyList<string> Searches = ["grid", "random"];
    public const int TrialsMax = 1_000;

    public static IReadOnlyList<Trial> Trials(JobSpecification baseSpec, SweepSpace space, string search, int randomTrials)
    {
        var errors = Validate(space, search, randomTrials);
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var combinations = search == "grid"
            ? [.. from lr in space.LearningRates from batch in space.BatchSizes from decay in space.WeightDecays select (lr, batch, decay)]
            : Random(space, randomTrials, baseSpec.Seed);
        if (combinations.Count > TrialsMax)
            throw new ArgumentException($"trials: {combinations.Count} is out of range; expected at most {TrialsMax}");
        return [.. combinations.Select((c, i) => new Trial(i + 1, baseSpec with
        {
            BatchSize = c.BatchSize,
            Optimizer = baseSpec.Optimizer with { LearningRate = c.LearningRate, WeightDecay = c.WeightDecay },
        }))];
    }

    /// <summary>Best first, by the validation metric of the last epoch.</summary>
    public static IReadOnlyList<T> Rank<T>(IEnumerable<T> trials, Func<T, (bool Succeeded, double Accuracy, double Loss)> score, bool languageModel) =>
        [.. trials
            .OrderBy(t => score(t).Succeeded ? 0 : 1)
            .ThenBy(t => languageModel ? score(t).Loss : -score(t).Accuracy)
            .ThenBy(t => score(t).Loss)];

    /// <summary>The metric the ranking uses, for the table's heading.</summary>
    public static string Metric(bool languageModel) => languageModel ? "validation loss (lower is better)" : "validation accuracy (higher is better)";

    private static List<string> Validate(SweepSpace space, string search, int randomTrials)
    {
        var errors = new List<string>();
        if (!Searches.Contains(search))
            errors.Add($"search: '{search}' is not a search; expected one of {string.Join(", ", Searches)}");
        if (space.LearningRates.Count == 0 || space.LearningRates.Any(lr => !(lr > 0) || double.IsInfinity(lr)))
            errors.Add($"lrs: [{string.Join(", ", space.LearningRates)}]; expected one or more finite numbers > 0");
        if (space.BatchSizes.Count == 0 || space.BatchSizes.Any(b => b is <= 0 or > JobSpecification.BatchSizeMax))
            errors.Add($"batch-sizes: [{string.Join(", ", space.BatchSizes)}]; expected one or more of 1 to {JobSpecification.BatchSizeMax}");
        if (space.WeightDecays.Count == 0 || space.WeightDecays.Any(w => !(w >= 0) || double.IsInfinity(w)))
            errors.Add($"weight-decays: [{string.Join(", ", space.WeightDecays)}]; expected one or more finite numbers >= 0");
        if (search == "random" && randomTrials is <= 0 or > TrialsMax)
            errors.Add($"trials: {randomTrials} is out of range; random search expects 1 to {TrialsMax}");
        return errors;
    }

    private static List<(double LearningRate, int BatchSize, double WeightDecay)> Random(SweepSpace space, int count, long seed)
    {
        var random = new Random(unchecked((int)seed ^ (int)(seed >> 32)));
        double low = Math.Log(space.LearningRates.Min()), high = Math.Log(space.LearningRates.Max());
        return [.. Enumerable.Range(0, count).Select(_ => (
            Math.Exp(low + (high - low) * random.NextDouble()),
            space.BatchSizes[random.Next(space.BatchSizes.Count)],
            space.WeightDecays[random.Next(space.WeightDecays.Count)]))];
    }
}
