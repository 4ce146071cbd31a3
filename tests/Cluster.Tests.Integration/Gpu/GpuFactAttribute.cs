using TorchSharp;

namespace Cluster.Tests.Integration.Gpu;

/// <summary>A test that needs a CUDA device; it is skipped, saying why, where there is none (CI, the CPU build of libtorch).</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (!torch.cuda.is_available())
            Skip = "no CUDA device: torch.cuda.is_available() is false (no GPU here, or the CPU build of libtorch; build with -p:TorchBackend=cuda on a GPU machine)";
    }
}
