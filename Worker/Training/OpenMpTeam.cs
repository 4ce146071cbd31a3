using System.Runtime.InteropServices;

namespace Cluster.Worker.Training;

/// <summary>
/// Pins the compute thread and its OpenMP helper threads one to a core, when the worker's
/// libtorch threads cover every core it may use. Left to the scheduler, a helper woken at the
/// start of a forward pass (it sleeps through the exchange with the parameter servers) is often
/// placed on the compute thread's own core; the two then take turns on that core in 0.25 ms
/// slices, each spinning at the team's barrier while the other runs, and the load balancer leaves
/// them there because both are cache-hot: about 12 ms lost per such step (measured with
/// `perf sched timehist` on 2 cores: one mlp step in five took 14 ms instead of 2.2). Linux only;
/// anywhere else, or with fewer threads than cores (several workers sharing a machine), nothing
/// is pinned.
/// </summary>
public static partial class OpenMpTeam
{
    private const int MaskWords = 16; // 1,024 CPUs

    /// <summary>
    /// Called on the compute thread after torch.set_num_threads: starts the team (one parallel
    /// kernel), then pins the caller to the first allowed CPU and each helper (threads that carry
    /// the caller's name, which they inherit when libgomp creates them) to the next ones.
    /// Returns what was pinned, e.g. "compute thread on CPU 0, 1 helper(s) on CPUs 1", or null.
    /// </summary>
    public static string? PinToCores()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            var allowed = AllowedCpus();
            int threads = TorchSharp.torch.get_num_threads();
            if (threads < 2 || threads != allowed.Count) return null;
            using (TorchSharp.torch.NewDisposeScope()) TorchSharp.torch.ones(1 << 22).sum();

            int self = GetTid();
            string name = File.ReadAllText("/proc/thread-self/comm").TrimEnd('\n');
            var helpers = new List<int>();
            foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (!int.TryParse(Path.GetFileName(task), out int tid) || tid == self) continue;
                try { if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == name) helpers.Add(tid); }
                catch (IOException) { } // a thread that ended meanwhile
            }
            if (helpers.Count == 0) return null;
            Pin(self, allowed[0]);
            var helperCpus = allowed.Skip(1).ToList();
            for (int i = 0; i < helpers.Count; i++) Pin(helpers[i], helperCpus[i % helperCpus.Count]);
            return $"compute thread on CPU {allowed[0]}, {helpers.Count} helper(s) on CPUs {string.Join(',', helperCpus)}";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The CPUs the calling thread may run on, in order.</summary>
    public static List<int> AllowedCpus()
    {
        var mask = new ulong[MaskWords];
        if (GetAffinity(0, MaskWords * sizeof(ulong), mask) != 0) throw new IOException($"sched_getaffinity failed (errno {Marshal.GetLastPInvokeError()})");
        var cpus = new List<int>();
        for (int cpu = 0; cpu < MaskWords * 64; cpu++)
            if ((mask[cpu / 64] & (1UL << (cpu % 64))) != 0) cpus.Add(cpu);
        return cpus;
    }

    private static void Pin(int tid, int cpu)
    {
        var mask = new ulong[MaskWords];
        mask[cpu / 64] = 1UL << (cpu % 64);
        if (SetAffinity(tid, MaskWords * sizeof(ulong), mask) != 0)
            throw new IOException($"sched_setaffinity of thread {tid} to CPU {cpu} failed (errno {Marshal.GetLastPInvokeError()})");
    }

    [LibraryImport("libc", EntryPoint = "sched_getaffinity", SetLastError = true)]
    private static partial int GetAffinity(int tid, nint bytes, [Out] ulong[] mask);

    [LibraryImport("libc", EntryPoint = "sched_setaffinity", SetLastError = true)]
    private static partial int SetAffinity(int tid, nint bytes, ulong[] mask);

    [LibraryImport("libc", EntryPoint = "gettid")]
    private static partial int GetTid();
}
