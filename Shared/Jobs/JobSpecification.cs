using Cluster.Shared.Optimizers;

namespace Cluster.Shared.Jobs;

/// <summary>
/// What a user asks the cluster to train. This is the JSON body of <c>POST /api/jobs</c> and the
/// source of the protobuf <see cref="Protos.JobSpec"/> that workers receive.
/// </summary>
public sealed record JobSpecification
{
    public static readonly IReadOnlyList<string> KnownModels = ["mlp", "cnn"];
    public static readonly IReadOnlyList<string> KnownDatasets = ["fashion-mnist", "mnist"];
    public static readonly IReadOnlyList<string> KnownSchemes = ["ps", "allreduce"];
    public static readonly IReadOnlyList<string> KnownSyncModes = ["bsp"];

    public const int EpochsMax = 10_000;
    public const int BatchSizeMax = 65_536;
    public const int WorkersMax = 1_024;

    public string Model { get; init; } = "cnn";
    public string Dataset { get; init; } = "fashion-mnist";
    /// <summary>Directory of the dataset's IDX files on the workers; null: the default search path.</summary>
    public string? DataDir { get; init; }
    public int Epochs { get; init; } = 2;
    /// <summary>Samples per worker per step.</summary>
    public int BatchSize { get; init; } = 64;
    public OptimizerSettings Optimizer { get; init; } = new();
    public int Workers { get; init; } = 2;
    public string Scheme { get; init; } = "ps";
    /// <summary>Scheme "allreduce": bytes of gradient per ring pass; 0: <see cref="BucketBytesDefault"/>.</summary>
    public int BucketBytes { get; init; }
    public const int BucketBytesDefault = 32 << 20;
    public string Sync { get; init; } = "bsp";
    public long Seed { get; init; } = 1;
    /// <summary>Train on the first N samples only; 0: all.</summary>
    public int TrainLimit { get; init; }
    /// <summary>Evaluate on the first N test samples only; 0: all.</summary>
    public int TestLimit { get; init; }
    /// <summary>"auto" (CUDA when present), "cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; init; } = "auto";

    /// <summary>Every problem with this job, each naming the field, the value and what was expected.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (!KnownModels.Contains(Model))
            errors.Add($"model: '{Model}' is not a known model; expected one of {string.Join(", ", KnownModels)}");
        if (!KnownDatasets.Contains(Dataset))
            errors.Add($"dataset: '{Dataset}' is not a known dataset; expected one of {string.Join(", ", KnownDatasets)}");
        if (Epochs is <= 0 or > EpochsMax)
            errors.Add($"epochs: {Epochs} is out of range; expected 1 to {EpochsMax}");
        if (BatchSize is <= 0 or > BatchSizeMax)
            errors.Add($"batch-size: {BatchSize} is out of range; expected 1 to {BatchSizeMax}");
        if (Workers is <= 0 or > WorkersMax)
            errors.Add($"workers: {Workers} is out of range; expected 1 to {WorkersMax}");
        if (!KnownSchemes.Contains(Scheme))
            errors.Add($"scheme: '{Scheme}' is not supported; expected one of {string.Join(", ", KnownSchemes)}");
        if (BucketBytes < 0)
            errors.Add($"bucket-bytes: {BucketBytes} is out of range; expected 0 (default) or a positive count");
        if (!KnownSyncModes.Contains(Sync))
            errors.Add($"sync: '{Sync}' is not supported; expected one of {string.Join(", ", KnownSyncModes)}");
        if (TrainLimit < 0)
            errors.Add($"train-limit: {TrainLimit} is out of range; expected 0 (all) or a positive count");
        if (TestLimit < 0)
            errors.Add($"test-limit: {TestLimit} is out of range; expected 0 (all) or a positive count");
        if (!DeviceNames.IsValid(Device))
            errors.Add($"device: '{Device}' is not a device; expected auto, cpu, cuda or cuda:N");
        errors.AddRange(Optimizer.Validate());
        return errors;
    }

    public Protos.JobSpec ToProto() => new()
    {
        Model = Model,
        Dataset = Dataset,
        DataDir = DataDir ?? "",
        Epochs = Epochs,
        BatchSize = BatchSize,
        Optimizer = Optimizer.ToProto(),
        Seed = Seed,
        TrainLimit = TrainLimit,
        TestLimit = TestLimit,
        Device = Device,
        Scheme = Scheme,
        BucketBytes = BucketBytes,
    };

    public static JobSpecification FromProto(Protos.JobSpec spec, int worldSize) => new()
    {
        Model = spec.Model,
        Dataset = spec.Dataset,
        DataDir = spec.DataDir.Length == 0 ? null : spec.DataDir,
        Epochs = spec.Epochs,
        BatchSize = spec.BatchSize,
        Optimizer = OptimizerSettings.FromProto(spec.Optimizer),
        Workers = worldSize,
        Seed = spec.Seed,
        TrainLimit = spec.TrainLimit,
        TestLimit = spec.TestLimit,
        Device = spec.Device,
        Scheme = spec.Scheme.Length == 0 ? "ps" : spec.Scheme,
        BucketBytes = spec.BucketBytes,
    };
}

/// <summary>Device names a job or a worker may ask for.</summary>
public static class DeviceNames
{
    public static bool IsValid(string device) =>
        device is "auto" or "cpu" or "cuda" ||
        (device.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(device.AsSpan(5), out int index) && index >= 0);
}
