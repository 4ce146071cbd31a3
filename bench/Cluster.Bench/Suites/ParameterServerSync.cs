using System.Diagnostics;
using Cluster.ParameterServer;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Cluster.Worker;
using Cluster.Worker.Training;

namespace Cluster.Bench.Suites;

/// <summary>
/// One BSP step's synchronisation as workers see it: push the gradient and pull the next
/// version from K parameter servers (the worker's own client over real loopback sockets: the
/// servers' data ports, or gRPC streams with --ps-transport grpc; servers applying Adam), for a model
/// of <c>elementCount</c> float32 parameters. Reported per worker: the median seconds per step, the
/// bytes it moved (pushed + pulled) per second, the CPU time of the whole process (worker and
/// servers) per step, and the managed bytes it allocated per timed step (with the gen2 collections).
/// </summary>
public static class ParameterServerSync
{
    public sealed record Result(int Workers, int Servers, string Dtype, double SecondsPerStep, double WireBytesPerWorker, double EffectiveGBps, double CpuSecondsPerStep,
        double AllocatedBytesPerStep, int Gen2Collections);

    public static async Task<Result> MeasureAsync(int elementCount, int workers, int servers, DType dtype, int steps,
        ParameterServerTransport transport = ParameterServerTransport.Tcp)
    {
        var security = new ClusterSecurity { Secret = ClusterSecret.Generate() };
        var hosts = new List<ParameterServerHost>();
        try
        {
            for (int k = 0; k < servers; k++)
                hosts.Add(await ParameterServerHost.StartAsync(new ParameterServerOptions { Security = security }, CancellationToken.None));
            return await MeasureAsync([.. hosts.Select(h => h.Url)], security, elementCount, workers, dtype, steps, transport, serverCpu: () => TimeSpan.Zero);
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    /// <summary>
    /// The same against servers already running at <paramref name="serverUrls"/>, in this process
    /// or others; <paramref name="serverCpu"/> gives the CPU time those other processes have used.
    /// </summary>
    public static async Task<Result> MeasureAsync(IReadOnlyList<string> serverUrls, ClusterSecurity security, int elementCount, int workers, DType dtype, int steps,
        ParameterServerTransport transport, Func<TimeSpan> serverCpu)
    {
        string jobId = $"bench-{Guid.NewGuid():N}";
        var options = new WorkerOptions { CoordinatorUrl = "http://127.0.0.1:1", Security = security, ParameterServerTransport = transport };
        var clients = Enumerable.Range(0, workers).Select(rank =>
        {
            var assignment = new Assignment { JobId = jobId, Rank = rank, WorldSize = workers };
            assignment.ParameterServers.AddRange(serverUrls);
            return new ShardedParameterClient(assignment, elementCount, dtype, topKRatio: 0, options);
        }).ToList();
        var parameters = clients.Select(_ => new float[elementCount]).ToList();
        var gradients = clients.Select(_ => Enumerable.Repeat(1e-3f, elementCount).ToArray()).ToList();
        var pushed = gradients.Select(StepGradient.Of).ToList();
        var header = new InitializeHeader { JobId = jobId, WorldSize = workers, Dtype = DType.Float32, Optimizer = new OptimizerSettings().ToProto() };
        header.Layout = new TensorLayout();
        header.Layout.Tensors.Add(new TensorSpec { Name = "weights", Shape = { elementCount }, Dtype = DType.Float32 });
        await Task.WhenAll(clients.Select((c, r) => c.InitializeAsync(header, parameters[r], CancellationToken.None)));

        // Warm up until the JIT has tiered up the hot loops (the first dozen 100 MB steps run
        // partly in unoptimised code), then report the median step: one step in ten is slowed by
        // a scheduling hiccup on 2 cores, and the median keeps those out of the comparison.
        const int warmup = 20;
        var stepSeconds = new List<double>();
        TimeSpan cpuStart = TimeSpan.Zero;
        long allocatedStart = 0;
        int gen2Start = 0;
        for (int step = 0; step < warmup + steps; step++)
        {
            if (step == warmup)
            {
                cpuStart = Process.GetCurrentProcess().TotalProcessorTime + serverCpu();
                (allocatedStart, gen2Start) = (GC.GetTotalAllocatedBytes(precise: true), GC.CollectionCount(2));
            }
            long started = Stopwatch.GetTimestamp();
            await Task.WhenAll(clients.Select((c, r) => c.PushAndPullAsync(step, 64, pushed[r], parameters[r], CancellationToken.None)));
            if (step >= warmup) stepSeconds.Add(Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
        double cpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime + serverCpu() - cpuStart).TotalSeconds / steps;
        double allocated = (double)(GC.GetTotalAllocatedBytes(precise: true) - allocatedStart) / steps;
        int gen2 = GC.CollectionCount(2) - gen2Start;
        stepSeconds.Sort();
        double seconds = stepSeconds[steps / 2];
        double bytes = 2.0 * elementCount * ElementCodec.ElementBytes(dtype);
        foreach (var client in clients) client.Dispose();
        return new Result(workers, serverUrls.Count, dtype.ToString().ToLowerInvariant(), seconds, bytes, bytes / seconds / 1e9, cpuSeconds, allocated, gen2);
    }
}
