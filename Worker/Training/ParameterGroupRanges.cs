using Cluster.Protos;
using Cluster.Sdk;

namespace Cluster.Worker.Training;

/// <summary>
/// Turns a task's parameter groups (name prefixes) into key ranges of the flat vector, each with
/// the job's optimizer settings: the servers give every group its own optimizer and state.
/// </summary>
public static class ParameterGroupRanges
{
    public static IEnumerable<ParameterGroup> For(ITrainingTask task, TensorLayout layout, OptimizerConfig optimizer)
    {
        if (task is not IParameterGroupTask grouped) yield break;
        foreach (var group in grouped.ParameterGroups)
        {
            long offset = 0, start = -1, end = -1;
            foreach (var tensor in layout.Tensors)
            {
                long elements = tensor.Shape.Aggregate(1L, (product, dimension) => product * dimension);
                if (tensor.Name.StartsWith(group.Prefix, StringComparison.Ordinal))
                {
                    if (start >= 0 && end != offset)
                        throw new InvalidOperationException(
                            $"parameter group {group.Name}: parameter {tensor.Name} is not next to the group's others; expected the parameters named {group.Prefix}* to be consecutive");
                    if (start < 0) start = offset;
                    end = offset + elements;
                }
                offset += elements;
            }
            if (start < 0)
                throw new InvalidOperationException($"parameter group {group.Name}: no parameter name starts with '{group.Prefix}'");
            yield return new ParameterGroup { Name = group.Name, Start = start, Elements = end - start, Optimizer = optimizer.Clone() };
        }
    }
}
