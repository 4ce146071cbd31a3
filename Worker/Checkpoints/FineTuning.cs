using Cluster.Shared.Jobs;
using Cluster.Worker.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Checkpoints;

/// <summary>
/// Saving a trained model and starting a job from it: load every tensor of the checkpoint into
/// the freshly built model (all ranks load the same file, so they start equal), optionally
/// leaving the head at its seeded initialisation (a new task, possibly with other classes), and
/// freezing parameters by name prefix (they get no gradient, so the server's update leaves them
/// unchanged: weight decay is refused with freezing).
/// </summary>
public static class FineTuning
{
    /// <summary>Parameters and persistent buffers (batch-norm statistics) in state_dict order.</summary>
    public static void Save(nn.Module model, string path, JobSpecification spec)
    {
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["model"] = spec.Model, ["dataset"] = spec.Dataset };
        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null) Directory.CreateDirectory(directory);
        SafeTensorsFile.Write(path, model.state_dict().Select(p => (p.Key, p.Value)), metadata);
    }

    /// <summary>Applies the job's init-from, replace-head and freeze to a freshly built model.</summary>
    public static void Apply(nn.Module model, JobSpecification spec)
    {
        if (spec.InitFrom is { Length: > 0 } path) Load(model, path, spec.ReplaceHead ? ModelZoo.HeadPrefix(model) : null);
        if (spec.Freeze.Count > 0) Freeze(model, spec.Freeze);
    }

    public static void Load(nn.Module model, string path, string? skipPrefix)
    {
        var entries = SafeTensorsFile.Read(path);
        var problems = new List<string>();
        using var noGrad = torch.no_grad();
        foreach (var (name, tensor) in model.state_dict())
        {
            if (skipPrefix is not null && name.StartsWith(skipPrefix, StringComparison.Ordinal)) continue;
            if (!entries.TryGetValue(name, out var entry))
            {
                problems.Add($"{name} is missing");
                continue;
            }
            if (!entry.Shape.SequenceEqual(tensor.shape) || entry.DType != (tensor.dtype == ScalarType.Int64 ? "I64" : "F32"))
            {
                problems.Add($"{name} is {entry.DType} [{string.Join(", ", entry.Shape)}], the model's is {tensor.dtype} [{string.Join(", ", tensor.shape)}]");
                continue;
            }
            using var source = torch.empty(entry.Shape, tensor.dtype);
            entry.Data.CopyTo(source.bytes);
            tensor.copy_(source);
        }
        if (problems.Count > 0)
            throw new InvalidDataException(
                $"init-from: {path} does not fit the model ({string.Join("; ", problems.Take(5))}); use --replace-head when only the head differs");
    }

    private static void Freeze(nn.Module model, IReadOnlyList<string> prefixes)
    {
        var parameters = model.named_parameters().ToList();
        foreach (string prefix in prefixes)
        {
            var matched = parameters.Where(p => p.name.StartsWith(prefix, StringComparison.Ordinal)).ToList();
            if (matched.Count == 0)
                throw new ArgumentException(
                    $"freeze: '{prefix}' names no parameter; expected a prefix of {string.Join(", ", parameters.Select(p => p.name))}");
            foreach (var (_, parameter) in matched) parameter.requires_grad_(false);
        }
    }
}
