using Cluster.Worker.Training;
using TorchSharp;

namespace Cluster.Tests.Unit.Training;

/// <summary><see cref="ComputeThread"/>: a job's work and every continuation of it run on the one thread; failures and cancellation reach the caller.</summary>
[Trait("Tier", "unit")]
public sealed class ComputeThreadTests
{
    [Fact]
    public async Task Work_and_every_continuation_it_awaits_run_on_the_compute_thread_and_pool_work_runs_elsewhere()
    {
        using var compute = new ComputeThread(threads: 1);
        var threads = new List<int>();
        int pooled = -1;
        await compute.RunAsync(async () =>
        {
            threads.Add(Environment.CurrentManagedThreadId);
            await Task.Delay(10);
            threads.Add(Environment.CurrentManagedThreadId);
            var elsewhere = new TaskCompletionSource();
            _ = Task.Run(async () => { await Task.Delay(5); elsewhere.SetResult(); });
            await elsewhere.Task;
            threads.Add(Environment.CurrentManagedThreadId);
            pooled = await Task.Run(() => Environment.CurrentManagedThreadId);
            await Task.Yield();
            threads.Add(Environment.CurrentManagedThreadId);
            Assert.True(compute.IsCurrent);
        });

        Assert.Equal(4, threads.Count);
        Assert.Single(threads.Distinct());
        Assert.NotEqual(Environment.CurrentManagedThreadId, threads[0]);
        Assert.NotEqual(threads[0], pooled);
        Assert.False(compute.IsCurrent);
    }

    [Fact]
    public async Task Libtorch_gets_the_requested_thread_count_on_the_compute_thread()
    {
        // The machine's core count: what the rest of this test process uses anyway.
        using var compute = new ComputeThread(Environment.ProcessorCount);
        int seen = 0;
        await compute.RunAsync(() =>
        {
            using var product = torch.ones(256, 256).matmul(torch.ones(256, 256));
            Assert.Equal(256f, product[0, 0].item<float>());
            seen = torch.get_num_threads();
            return Task.CompletedTask;
        });
        Assert.Equal(Environment.ProcessorCount, seen);
    }

    [Fact]
    public async Task A_failure_faults_the_task_and_a_cancellation_cancels_it()
    {
        using var compute = new ComputeThread(threads: 0);
        var failure = await Assert.ThrowsAsync<InvalidDataException>(() => compute.RunAsync(async () =>
        {
            await Task.Yield();
            throw new InvalidDataException("gradient: NaN at element 3");
        }));
        Assert.Equal("gradient: NaN at element 3", failure.Message);

        using var cancel = new CancellationTokenSource();
        var cancelled = compute.RunAsync(async () =>
        {
            await cancel.CancelAsync();
            await Task.Delay(Timeout.Infinite, cancel.Token);
        });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        Assert.True(cancelled.IsCanceled);

        // The thread goes on serving work after both.
        int ran = 0;
        await compute.RunAsync(() => { ran++; return Task.CompletedTask; });
        Assert.Equal(1, ran);
    }

    [Fact]
    public async Task Dispose_waits_for_queued_work_and_later_posts_are_dropped()
    {
        var compute = new ComputeThread(threads: 0);
        int ran = 0;
        var first = compute.RunAsync(() => { Thread.Sleep(50); ran++; return Task.CompletedTask; });
        var second = compute.RunAsync(() => { ran++; return Task.CompletedTask; });
        compute.Dispose();
        await Task.WhenAll(first, second);
        Assert.Equal(2, ran);

        var late = compute.RunAsync(() => { ran++; return Task.CompletedTask; });
        await Task.Delay(50);
        Assert.False(late.IsCompleted);
        Assert.Equal(2, ran);
    }
}
