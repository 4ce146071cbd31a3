namespace Cluster.Bench;

/// <summary>One row of the results: what was measured, the figure, its unit, and the ratio it is judged by.</summary>
public sealed record Measurement(string Suite, string Name, double Value, string Unit, double? Ratio = null, string? RatioOf = null);
