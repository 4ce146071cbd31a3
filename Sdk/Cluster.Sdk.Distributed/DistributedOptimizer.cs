using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Worker;
using Cluster.Worker.Training;
using Grpc.Core;
using TorchSharp;

namespace Cluster.Sdk.Distributed;

/// <summary>
/// Horovod-style data parallelism for a training loop the user keeps: wrap the model, call
/// <see cref="BroadcastParametersAsync"/> once, then per batch compute the loss, call
/// backward() and <see cref="StepAsync"/>. The optimizer runs on the parameter servers (with
/// its state there, sharded): a step pushes this rank's gradient, the servers average every
/// rank's (weighted by sample count) and apply the update, and the step ends with the new
/// parameters copied into the model: every rank holds the same model after every step.
///
/// Message sequence (the parameter-server protocol of parameter_server.proto):
///  1. BroadcastParameters: rank 0 calls Initialize with its parameters; every rank pulls
///     version 0 (ranks other than 0 retry while the job does not exist yet).
///  2. Step t: PushGradients(step = t) and PullParameters(min_version = t + 1), in parallel.
///  3. Dispose closes the connections; the job's state stays on the servers until they stop.
/// </summary>
public sealed class DistributedOptimizer : IDisposable
{
    private static readonly TimeSpan RetryInterval = TimeSpan.FromMilliseconds(100);

    private readonly DistributedOptions _options;
    private readonly OptimizerSettings _settings;
    private readonly ParameterVector _vector;
    private readonly ShardedParameterClient _servers;
    private readonly float[] _parameters;
    private readonly float[] _gradients;

    public DistributedOptimizer(torch.nn.Module model, OptimizerSettings optimizer, DistributedOptions options)
    {
        var errors = optimizer.Validate().ToList();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors), nameof(optimizer));
        (_options, _settings) = (options, optimizer);
        _vector = new ParameterVector(model);
        _parameters = new float[_vector.ElementCount];
        _gradients = new float[_vector.ElementCount];
        var assignment = new Assignment { JobId = options.JobId, Rank = options.Rank, WorldSize = options.WorldSize };
        assignment.ParameterServers.AddRange(options.ParameterServers);
        var clientOptions = new WorkerOptions { CoordinatorUrl = options.CoordinatorUrl, Security = options.Security, BarrierTimeout = options.BarrierTimeout };
        _servers = new ShardedParameterClient(assignment, _vector.ElementCount, DType.Float32, topKRatio: 0, clientOptions);
    }

    /// <summary>From the environment `cluster launch` sets (see <see cref="DistributedOptions.FromEnvironment"/>).</summary>
    public static DistributedOptimizer FromEnvironment(torch.nn.Module model, OptimizerSettings optimizer) =>
        new(model, optimizer, DistributedOptions.FromEnvironment());

    public int Rank => _options.Rank;
    public int WorldSize => _options.WorldSize;
    /// <summary>Steps applied so far: the version of the parameters in the model.</summary>
    public long Step { get; private set; }

    /// <summary>Makes every rank start from rank 0's parameters, which also become the servers' master weights.</summary>
    public async Task BroadcastParametersAsync(CancellationToken cancellationToken = default)
    {
        if (Rank == 0)
        {
            _vector.ReadParameters(Bytes(_parameters));
            var header = new InitializeHeader
            {
                JobId = _options.JobId, WorldSize = WorldSize, Layout = _vector.Layout(), Dtype = DType.Float32, Optimizer = _settings.ToProto(),
            };
            await _servers.InitializeAsync(header, _parameters, cancellationToken);
        }
        var giveUp = DateTime.UtcNow + _options.BroadcastTimeout;
        while (true)
        {
            try
            {
                await _servers.PullAsync(0, _parameters, cancellationToken);
                break;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.NotFound && DateTime.UtcNow < giveUp)
            {
                await Task.Delay(RetryInterval, cancellationToken);
            }
        }
        _vector.WriteParameters(Bytes(_parameters));
        Step = 0;
    }

    /// <summary>
    /// Sends the gradients now in the model's .grad (the mean over this rank's
    /// <paramref name="sampleCount"/> samples) and loads the parameters of the next version.
    /// </summary>
    public async Task StepAsync(int sampleCount, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sampleCount);
        using (var gradient = _vector.Gradients(_gradients))
            await _servers.PushAndPullAsync(Step, sampleCount, gradient, _parameters, cancellationToken);
        _vector.WriteParameters(Bytes(_parameters));
        Step++;
    }

    private static Span<byte> Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan());

    public void Dispose()
    {
        _servers.Dispose();
        _vector.Dispose();
    }
}
