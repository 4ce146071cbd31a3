namespace Cluster.Shared.Optimizers;

/// <summary>Hyperparameters of an optimizer, with PyTorch's defaults.</summary>
public sealed record OptimizerSettings
{
    public string Kind { get; init; } = "adam";
    public double LearningRate { get; init; } = 1e-3;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    public double WeightDecay { get; init; }
    public double Momentum { get; init; }
    public double Dampening { get; init; }
    public bool Nesterov { get; init; }

    public static readonly IReadOnlyList<string> Kinds = ["adam", "adamw", "sgd"];

    /// <summary>Builds the optimizer for a vector of <paramref name="elementCount"/> parameters.</summary>
    public IOptimizer Create(int elementCount) => Kind switch
    {
        "adam" => new AdamOptimizer(elementCount, LearningRate, Beta1, Beta2, Epsilon, WeightDecay),
        "adamw" => new AdamOptimizer(elementCount, LearningRate, Beta1, Beta2, Epsilon, WeightDecay, decoupledWeightDecay: true),
        "sgd" => new SgdOptimizer(elementCount, LearningRate, Momentum, Dampening, WeightDecay, Nesterov),
        _ => throw new ArgumentException($"optimizer: '{Kind}' is not a known optimizer; expected one of {string.Join(", ", Kinds)}"),
    };

    /// <summary>Every problem with these settings, each naming the field, the value and what was expected.</summary>
    public IEnumerable<string> Validate()
    {
        if (!Kinds.Contains(Kind))
            yield return $"optimizer: '{Kind}' is not a known optimizer; expected one of {string.Join(", ", Kinds)}";
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate))
            yield return $"lr: {LearningRate} is out of range; expected a finite number > 0";
        if (!(Beta1 >= 0 && Beta1 < 1))
            yield return $"beta1: {Beta1} is out of range; expected 0 <= beta1 < 1";
        if (!(Beta2 >= 0 && Beta2 < 1))
            yield return $"beta2: {Beta2} is out of range; expected 0 <= beta2 < 1";
        if (!(Epsilon >= 0) || double.IsInfinity(Epsilon))
            yield return $"eps: {Epsilon} is out of range; expected a finite number >= 0";
        if (!(WeightDecay >= 0) || double.IsInfinity(WeightDecay))
            yield return $"weight-decay: {WeightDecay} is out of range; expected a finite number >= 0";
        if (!(Momentum >= 0) || double.IsInfinity(Momentum))
            yield return $"momentum: {Momentum} is out of range; expected a finite number >= 0";
        if (!(Dampening >= 0 && Dampening <= 1))
            yield return $"dampening: {Dampening} is out of range; expected 0 <= dampening <= 1";
        if (Nesterov && (Momentum <= 0 || Dampening != 0))
            yield return "nesterov: true needs momentum > 0 and dampening 0";
    }

    public Protos.OptimizerConfig ToProto() => new()
    {
        Kind = Kind,
        LearningRate = LearningRate,
        Beta1 = Beta1,
        Beta2 = Beta2,
        Epsilon = Epsilon,
        WeightDecay = WeightDecay,
        Momentum = Momentum,
        Dampening = Dampening,
        Nesterov = Nesterov,
    };

    public static OptimizerSettings FromProto(Protos.OptimizerConfig config) => new()
    {
        Kind = config.Kind,
        LearningRate = config.LearningRate,
        Beta1 = config.Beta1,
        Beta2 = config.Beta2,
        Epsilon = config.Epsilon,
        WeightDecay = config.WeightDecay,
        Momentum = config.Momentum,
        Dampening = config.Dampening,
        Nesterov = config.Nesterov,
    };
}
