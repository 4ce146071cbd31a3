using System.Collections.Concurrent;
using Cluster.Protos;
using Cluster.Shared.Optimizers;

namespace Cluster.ParameterServer.Training;

/// <summary>The jobs this server holds parameters for, by job id; checkpointed when <paramref name="checkpoints"/> is given.</summary>
public sealed class ParameterStore(Checkpoints.JobCheckpoints? checkpoints = null)
{
    /// <summary>Largest model one job may hold, in float32 elements (2 GiB of weights).</summary>
    public const long ElementsMax = int.MaxValue / sizeof(float);

    private readonly ConcurrentDictionary<string, JobParameters> _jobs = new();

    public JobParameters? Find(string jobId) => _jobs.GetValueOrDefault(jobId);

    public IReadOnlyCollection<JobParameters> Jobs => (IReadOnlyCollection<JobParameters>)_jobs.Values;

    /// <summary>Element count the layout describes, after checking every shape.</summary>
    public static long ElementCount(TensorLayout layout)
    {
        if (layout.Tensors.Count == 0)
            throw new ArgumentException("layout: no tensors; expected at least one parameter");
        long total = 0;
        foreach (var tensor in layout.Tensors)
        {
            if (tensor.Dtype != DType.Float32)
                throw new ArgumentException($"layout.{tensor.Name}.dtype: {tensor.Dtype}; expected DTYPE_FLOAT32");
            long count = 1;
            foreach (long dimension in tensor.Shape)
            {
                if (dimension <= 0 || dimension > ElementsMax)
                    throw new ArgumentException($"layout.{tensor.Name}.shape: dimension {dimension}; expected 1 to {ElementsMax}");
                count *= dimension;
                if (count > ElementsMax) break;
            }
            total += count;
            if (total > ElementsMax)
                throw new ArgumentException($"layout: more than {ElementsMax} elements; expected a model of at most {ElementsMax * sizeof(float)} bytes");
        }
        return total;
    }

    /// <summary>Creates the job unless it exists; returns it and whether this call created it.</summary>
    public (JobParameters Job, bool Created) GetOrCreate(InitializeHeader header, float[] initialWeights)
    {
        var created = false;
        var job = _jobs.GetOrAdd(header.JobId, _ =>
        {
            created = true;
            int partition = header.PartitionElements > 0 ? header.PartitionElements : JobParameters.DefaultPartitionElements;
            return new JobParameters(header.JobId, header.WorldSize, header.Layout, OptimizerSettings.FromProto(header.Optimizer),
                initialWeights, header.RangeStart, partition, [.. header.Groups.Select(OptimizerGroup.FromProto)])
            {
                SyncMode = header.Sync.Length == 0 ? JobParameters.Bsp : header.Sync,
                Staleness = header.Staleness,
            };
        });
        if (created) checkpoints?.Attach(job);
        if (!created && (job.ElementCount != initialWeights.Length || job.RangeStart != header.RangeStart))
            throw new ArgumentException(
                $"job {header.JobId}: already holds elements [{job.RangeStart}, {job.RangeStart + job.ElementCount}); this Initialize sent [{header.RangeStart}, {header.RangeStart + initialWeights.Length})");
        return (job, created);
    }

    /// <summary>Holds a job restored from a checkpoint (at start, before any worker calls).</summary>
    public JobParameters Restore(JobSnapshot snapshot)
    {
        var job = JobParameters.Restore(snapshot);
        if (!_jobs.TryAdd(snapshot.JobId, job))
        {
            job.Close();
            throw new ArgumentException($"job {snapshot.JobId}: already held; a second checkpoint of it was found (another key range?)");
        }
        checkpoints?.Attach(job);
        return job;
    }

    public bool Remove(string jobId)
    {
        if (!_jobs.TryRemove(jobId, out var job)) return false;
        checkpoints?.Detach(job);
        job.Close();
        return true;
    }
}
