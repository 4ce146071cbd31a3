namespace Cluster.Shared.Optimizers;

/// <summary>
/// A parameter group: the elements [Start, Start + Elements) of a model's flat parameter vector,
/// updated by their own optimizer with its own state (e.g. a GAN's generator and discriminator).
/// </summary>
public sealed record OptimizerGroup(string Name, long Start, long Elements, OptimizerSettings Optimizer)
{
    public Protos.ParameterGroup ToProto() =>
        new() { Name = Name, Start = Start, Elements = Elements, Optimizer = Optimizer.ToProto() };

    public static OptimizerGroup FromProto(Protos.ParameterGroup group) =>
        new(group.Name, group.Start, group.Elements, OptimizerSettings.FromProto(group.Optimizer));
}

/// <summary>Validates parameter groups and builds the optimizer of one key range from them.</summary>
public static class OptimizerGroups
{
    /// <summary>Every problem with <paramref name="groups"/> over a vector of <paramref name="elementCount"/> elements.</summary>
    public static IEnumerable<string> Validate(IReadOnlyList<OptimizerGroup> groups, long elementCount)
    {
        long end = 0;
        foreach (var group in groups.OrderBy(g => g.Start))
        {
            if (group.Elements <= 0 || group.Start < 0 || group.Start > elementCount - group.Elements)
                yield return $"groups.{group.Name}: elements [{group.Start}, {group.Start + group.Elements}) are out of range; expected a non-empty range inside [0, {elementCount})";
            else if (group.Start < end)
                yield return $"groups.{group.Name}: starts at {group.Start}, inside the previous group (ends at {end}); expected groups that do not overlap";
            end = Math.Max(end, group.Start + group.Elements);
            foreach (string error in group.Optimizer.Validate())
                yield return $"groups.{group.Name}.{error}";
        }
    }

    /// <summary>
    /// The optimizer of the key range [rangeStart, rangeStart + rangeElements): each group's part
    /// of the range gets its group's optimizer, the elements of no group <paramref name="fallback"/>.
    /// </summary>
    public static IOptimizer Create(OptimizerSettings fallback, IReadOnlyList<OptimizerGroup> groups, long rangeStart, int rangeElements)
    {
        var errors = Validate(groups, long.MaxValue).ToList();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        if (groups.Count == 0) return fallback.Create(rangeElements);
        var pieces = new List<GroupedOptimizer.Piece>();
        int position = 0;
        foreach (var group in groups.OrderBy(g => g.Start))
        {
            long start = Math.Max(group.Start - rangeStart, 0), end = Math.Min(group.Start + group.Elements - rangeStart, rangeElements);
            if (end <= start) continue;
            if (start > position) pieces.Add(new(position, (int)start - position, fallback.Create((int)start - position)));
            pieces.Add(new((int)start, (int)(end - start), group.Optimizer.Create((int)(end - start))));
            position = (int)end;
        }
        if (position < rangeElements) pieces.Add(new(position, rangeElements - position, fallback.Create(rangeElements - position)));
        return new GroupedOptimizer(rangeElements, pieces);
    }
}

/// <summary>
/// Steps consecutive pieces of a vector with their own optimizers: a range given to
/// <see cref="StepRange"/> is cut at the piece boundaries and each part goes to its piece's
/// optimizer at the offset relative to the piece. Every piece keeps its own state.
/// </summary>
public sealed class GroupedOptimizer(int elementCount, IReadOnlyList<GroupedOptimizer.Piece> pieces) : FlatOptimizer(elementCount)
{
    /// <summary>Elements [Start, Start + Length) of the vector, updated by <paramref name="Optimizer"/>.</summary>
    public sealed record Piece(int Start, int Length, IOptimizer Optimizer);

    public IReadOnlyList<Piece> Pieces { get; } = pieces;

    public override void StepRange(int offset, Span<float> parameters, Span<float> gradient, long step)
    {
        CheckRange(offset, parameters.Length, gradient.Length);
        int end = offset + parameters.Length;
        foreach (var piece in Pieces)
        {
            int start = Math.Max(offset, piece.Start), stop = Math.Min(end, piece.Start + piece.Length);
            if (stop <= start) continue;
            piece.Optimizer.StepRange(start - piece.Start,
                parameters.Slice(start - offset, stop - start), gradient.Slice(start - offset, stop - start), step);
        }
    }

    public override void StepRange(int offset, Span<float> parameters, ReadOnlySpan<ushort> gradientBFloat16, Span<ushort> weightsBFloat16, long step)
    {
        CheckRange(offset, parameters.Length, gradientBFloat16.Length);
        CheckCopy(parameters.Length, weightsBFloat16.Length);
        int end = offset + parameters.Length;
        foreach (var piece in Pieces)
        {
            int start = Math.Max(offset, piece.Start), stop = Math.Min(end, piece.Start + piece.Length);
            if (stop <= start) continue;
            piece.Optimizer.StepRange(start - piece.Start, parameters.Slice(start - offset, stop - start), gradientBFloat16.Slice(start - offset, stop - start),
                weightsBFloat16.IsEmpty ? weightsBFloat16 : weightsBFloat16.Slice(start - offset, stop - start), step);
        }
    }
}
