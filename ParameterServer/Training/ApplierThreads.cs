using System.Collections.Concurrent;

namespace Cluster.ParameterServer.Training;

/// <summary>
/// The threads that apply BSP steps' partitions, one per core, shared by every job of the process
/// (a job asks for up to its ApplierCount of them per step). They are not the .NET thread pool's:
/// a pull that waits for a partition resumes on the thread pool, and with the appliers on it, a
/// pull waited for the appliers to free a thread after its partition was done (5 to 9 ms a 100 MB
/// step over a 10 Gb/s link; BENCHMARKS.md, "Appliers on threads of their own").
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
