using System.Collections.Concurrent;

namespace Cluster.Worker.Training;

/// <summary>
/// Runs an async job on one dedicated thread: every continuation after an await comes back to
/// it (a single-threaded <see cref="SynchronizationContext"/>). libtorch's OpenMP keeps a team of
/// worker threads per calling thread; when training hops between thread-pool threads, each
/// hop lands on a thread without a warm team (and with its own per-thread settings), so the
/// forward and backward passes lose their intra-op parallelism. Training on one thread keeps
/// libtorch's parallelism what it is in a plain single-process loop.
/// </summary>
public static class TorchThread
{
    /// <summary>Runs <paramref name="job"/> to completion on a new thread; the returned task ends with it.</summary>
    public static Task RunAsync(string name, Func<Task> job)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            using var context = new SingleThreadContext();
            SynchronizationContext.SetSynchronizationContext(context);
            Task task;
            try { task = job(); }
            catch (Exception e) { task = Task.FromException(e); }
            task.ContinueWith(_ => context.Complete(), TaskScheduler.Default);
            context.RunUntilComplete();
            if (task.IsCanceled) done.TrySetCanceled();
            else if (task.Exception is { } error) done.TrySetException(error.InnerExceptions);
            else done.TrySetResult();
        })
        {
            IsBackground = true,
            Name = name,
        };
        thread.Start();
        return done.Task;
    }

    private sealed class SingleThreadContext : SynchronizationContext, IDisposable
    {
        private readonly BlockingCollection<(SendOrPostCallback Callback, object? State)> _queue = [];

        public override void Post(SendOrPostCallback d, object? state)
        {
            try { _queue.Add((d, state)); }
            catch (Exception e) when (e is InvalidOperationException or ObjectDisposedException)
            {
                // The job has ended: late callbacks (a cancelled timer, say) run on the thread pool.
                ThreadPool.QueueUserWorkItem(_ => d(state));
            }
        }

        public override void Send(SendOrPostCallback d, object? state) =>
            throw new NotSupportedException("TorchThread: synchronous Send is not supported");

        public override SynchronizationContext CreateCopy() => this;

        public void Complete() => _queue.CompleteAdding();

        public void RunUntilComplete()
        {
            foreach (var (callback, state) in _queue.GetConsumingEnumerable()) callback(state);
        }

        public void Dispose() => _queue.Dispose();
    }
}
