using System.Collections.Concurrent;

namespace Cluster.Worker.Training;

/// <summary>
/// The one thread of a worker process that runs its tensor work. libtorch's CPU kernels use
/// OpenMP (libgomp), which gives every thread that calls them a team of helper threads of its
/// own; once the process holds more OpenMP threads than the machine has cores, every team stops
/// spinning between parallel regions and sleeps in the kernel instead, and small kernels pay a
/// futex wake-up each (measured on 2 cores: an mlp step of batch 64 takes 1.4 ms on the only
/// thread that ever called libtorch, 3.4 ms as soon as a second thread has run one large
/// tensor copy). Work given to <see cref="RunAsync"/> runs here, and so do the continuations of
/// everything it awaits (a single-threaded <see cref="SynchronizationContext"/>), so a job's
/// tensors are touched by this thread only. Work that touches no tensors and can use another
/// core meanwhile (socket exchanges, ring reductions) is sent to the thread pool explicitly.
/// </summary>
public sealed class ComputeThread : IDisposable
{
    private readonly BlockingCollection<(SendOrPostCallback Callback, object? State)> _queue = [];
    private readonly Thread _thread;

    private static int s_created;

    /// <param name="threads">libtorch's intra-op threads (torch.set_num_threads), set on this thread; 0 leaves libtorch's default.</param>
    /// <param name="pinToCores">Pin this thread and its OpenMP helpers one to a core when they cover every core (<see cref="OpenMpTeam"/>).</param>
    public ComputeThread(int threads, bool pinToCores = false)
    {
        // A name of its own: libgomp's helper threads inherit it, which is how OpenMpTeam finds them.
        _thread = new Thread(() => Pump(threads, pinToCores)) { IsBackground = true, Name = $"Compute {Interlocked.Increment(ref s_created)}" };
        _thread.Start();
    }

    /// <summary>What <see cref="OpenMpTeam.PinToCores"/> pinned (null: nothing), once the thread has started.</summary>
    public Task<string?> Pinned => _pinned.Task;
    private readonly TaskCompletionSource<string?> _pinned = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Whether the caller is this thread.</summary>
    public bool IsCurrent => Thread.CurrentThread == _thread;

    /// <summary>Runs <paramref name="work"/> on this thread, every continuation of it included; completes as it does (faulted or cancelled alike).</summary>
    public Task RunAsync(Func<Task> work)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(async _ =>
        {
            try
            {
                await work();
                done.SetResult();
            }
            catch (OperationCanceledException e)
            {
                done.SetCanceled(e.CancellationToken);
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        }, null);
        return done.Task;
    }

    private void Post(SendOrPostCallback callback, object? state)
    {
        // A continuation posted after Dispose (a late socket completion) has nothing left to continue.
        try { _queue.Add((callback, state)); }
        catch (InvalidOperationException) { }
    }

    private void Pump(int threads, bool pinToCores)
    {
        SynchronizationContext.SetSynchronizationContext(new Context(this));
        if (threads > 0) TorchSharp.torch.set_num_threads(threads);
        string? pinned = null;
        // Pinning only speeds the job up: whatever stops it must not stop the thread.
        try { if (pinToCores) pinned = OpenMpTeam.PinToCores(); }
        catch (Exception e) { pinned = $"none ({e.GetType().Name}: {e.Message})"; }
        _pinned.SetResult(pinned);
        foreach (var (callback, state) in _queue.GetConsumingEnumerable()) callback(state);
    }

    public void Dispose()
    {
        _queue.CompleteAdding();
        if (!IsCurrent) _thread.Join();
    }

    private sealed class Context(ComputeThread owner) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state) => owner.Post(d, state);

        public override void Send(SendOrPostCallback d, object? state)
        {
            if (owner.IsCurrent)
            {
                d(state);
                return;
            }
            using var done = new ManualResetEventSlim();
            Exception? failure = null;
            owner.Post(_ =>
            {
                try { d(state); }
                catch (Exception e) { failure = e; }
                finally { done.Set(); }
            }, null);
            done.Wait();
            if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }

        public override SynchronizationContext CreateCopy() => this;
    }
}
