using System.Diagnostics;

namespace Cluster.Worker.Telemetry;

/// <summary>What a worker's device is, for the dashboard: "CPU, N cores", or the GPUs' names and memory.</summary>
public static class DeviceDescription
{
    public static string Describe(string requested)
    {
        string cpu = $"CPU, {Environment.ProcessorCount} cores";
        if (requested == "cpu") return cpu;
        bool cuda;
        try { cuda = TorchSharp.torch.cuda.is_available(); }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or NotSupportedException) { cuda = false; }
        if (!cuda) return cpu;
        return QueryGpus() ?? $"CUDA, {TorchSharp.torch.cuda.device_count()} device(s)";
    }

    /// <summary>"NVIDIA H100 80GB HBM3, 81559 MiB" per GPU, from nvidia-smi when it is there.</summary>
    private static string? QueryGpus()
    {
        try
        {
            using var smi = Process.Start(new ProcessStartInfo("nvidia-smi", "--query-gpu=name,memory.total --format=csv,noheader")
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            });
            if (smi is null) return null;
            string output = smi.StandardOutput.ReadToEnd();
            if (!smi.WaitForExit(5000) || smi.ExitCode != 0) return null;
            var gpus = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return gpus.Length == 0 ? null : string.Join("; ", gpus);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
