using Cluster.Shared.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Checkpoints;

/// <summary>
/// TorchSharp tensors to and from safetensors files (the format itself is
/// <see cref="SafeTensors"/>, shared with the parameter servers' checkpoints).
/// </summary>
public static class SafeTensorsFile
{
    /// <summary>Writes <paramref name="tensors"/> atomically (temporary file, fsync, rename).</summary>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var entries = new List<SafeTensors.Tensor>();
        foreach (var (name, tensor) in tensors)
        {
            using var cpu = tensor.detach().cpu().contiguous();
            string dtype = cpu.dtype switch
            {
                ScalarType.Float32 => "F32",
                ScalarType.Int64 => "I64",
                var other => throw new NotSupportedException($"tensor {name}: dtype {other}; checkpoints hold float32 and int64 tensors"),
            };
            entries.Add(new SafeTensors.Tensor(name, dtype, cpu.shape, cpu.bytes.ToArray()));
        }
        SafeTensors.Write(path, entries, metadata);
    }

    /// <summary>Every tensor of the file by name, after checking the header against the bytes present.</summary>
    public static Dictionary<string, SafeTensors.Entry> Read(string path) => SafeTensors.Read(path);
}
