using System.Collections.Concurrent;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// The threads that apply BSP steps' partitions, one per core, shared by every job of the process
/// (a job asks for up to its ApplierCount of them per step). They are not the .NET thread pool's:
/// a pull that waits for a partition resumes on the thread pool, and with the appliers on it, a
/// pull waited for an applier to give a thread back after its partition was done (over a 10 Gb/s
/// link, a 100 MB pull's first chunk came 9 ms after the push's answer, and 3 ms with these
/// threads; BENCHMARKS.md, "The 100 MB sync over a 10 Gb/s link, and appliers on threads of
/// their own").
/// </summary>
internal static class ApplierThreads
{
    private static readonly BlockingCollection<Action> s_work = Start();

    /// <summary>Runs <paramref name="work"/> on the next free applier thread; it must not throw.</summary>
    public static void Run(Action work) => s_work.Add(work);

    private static BlockingCollection<Action> Start()
    {
        var work = new BlockingCollection<Action>(new ConcurrentQueue<Action>());
        for (int i = 0; i < Environment.ProcessorCount; i++)
            new Thread(() =>
            {
                foreach (var action in work.GetConsumingEnumerable()) action();
            }) { IsBackground = true, Name = "ps applier" }.Start();
        return work;
    }
}
