using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Training;

/// <summary>Maps a device name ("auto", "cpu", "cuda", "cuda:N") to a TorchSharp device.</summary>
public static class DeviceSelector
{
    public static Device Resolve(string requested)
    {
        bool cudaAvailable = torch.cuda.is_available();
        switch (requested)
        {
            case "auto":
                return cudaAvailable ? torch.CUDA : torch.CPU;
            case "cpu":
                return torch.CPU;
        }
        if (!requested.StartsWith("cuda", StringComparison.Ordinal))
            throw new ArgumentException($"device: '{requested}' is not a device; expected auto, cpu, cuda or cuda:N");
        if (!cudaAvailable)
            throw new ArgumentException(
                $"device: '{requested}' was asked for but CUDA is not available here (CPU build of libtorch, or no GPU); use --device cpu or build with -p:TorchBackend=cuda");
        int index = requested == "cuda" ? 0 : int.Parse(requested.AsSpan(5));
        int count = torch.cuda.device_count();
        if (index >= count)
            throw new ArgumentException($"device: '{requested}' does not exist; this machine has {count} CUDA device(s)");
        return torch.device(DeviceType.CUDA, index);
    }

    /// <summary>A name for operators: "cpu" or "cuda:N".</summary>
    public static string Describe(Device device) =>
        device.type == DeviceType.CUDA ? $"cuda:{device.index}" : "cpu";
}
