using System.Runtime.InteropServices;

namespace Cluster.Worker.Training;

/// <summary>
/// How long libtorch's idle OpenMP threads spin before they sleep, set for a worker process
/// before libtorch loads. libgomp's default (GOMP_SPINCOUNT 300,000 iterations, about a
/// millisecond here) keeps the helper threads of the compute thread's team burning a core after
/// every forward/backward, exactly while the exchange with the parameter servers needs that core
/// (socket copies, and on a shared machine the server's own receive and optimizer). 10,000
/// iterations still bridge the gaps between one step's kernels. Measured on 2 cores, cnn, one
/// worker (BENCHMARKS.md, "OpenMP threads that stop spinning"): median step 16.7 → 14.0 ms, the
/// push 1.75 → 0.88 ms. A setting the user made (GOMP_SPINCOUNT or OMP_WAIT_POLICY) is kept.
/// </summary>
public static partial class OpenMpSpin
{
    public const string Variable = "GOMP_SPINCOUNT";
    public const string WorkerValue = "10000";

    /// <summary>Sets <see cref="Variable"/> in the C environment (which libgomp reads when it loads) unless the user chose a spin policy.</summary>
    public static void ApplyToProcess()
    {
        if (!OperatingSystem.IsLinux()) return;
        if (NativeValue(Variable) is not null || NativeValue("OMP_WAIT_POLICY") is not null) return;
        // .NET's Environment.SetEnvironmentVariable keeps a managed copy on Unix: libgomp would never see it.
        if (SetEnv(Variable, WorkerValue, 0) != 0) return;
        Environment.SetEnvironmentVariable(Variable, WorkerValue);
    }

    /// <summary>The variable as the C library sees it (null when unset).</summary>
    public static string? NativeValue(string name) => Marshal.PtrToStringUTF8(GetEnv(name));

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("libc", EntryPoint = "getenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr GetEnv(string name);
}
