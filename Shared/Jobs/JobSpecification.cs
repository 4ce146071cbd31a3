using Cluster.Shared.Optimizers;

namespace Cluster.Shared.Jobs;

/// <summary>
/// What a user asks the cluster to train. This is the JSON body of <c>POST /api/jobs</c> and the
/// source of the protobuf <see cref="Protos.JobSpec"/> that workers receive.
/// </summary>
public sealed record JobSpecification
{
    public static readonly IReadOnlyList<string> KnownModels = ["mlp", "cnn", "resnet", "lstm", "transformer", "gan"];
    /// <summary>Generative models: they train on 28 x 28 single-channel images and report the discriminator's accuracy.</summary>
    public static readonly IReadOnlyList<string> GenerativeModels = ["gan"];
    /// <summary>The datasets the gan's generator fits (28 x 28, one channel).</summary>
    public static readonly IReadOnlyList<string> GanDatasets = ["fashion-mnist", "mnist", "synthetic"];
    public static readonly IReadOnlyList<string> KnownDatasets = ["fashion-mnist", "mnist", "cifar10", "synthetic", "text"];
    /// <summary>Character language models: they train on the "text" dataset and report perplexity.</summary>
    public static readonly IReadOnlyList<string> LanguageModels = ["lstm", "transformer"];
    public static readonly IReadOnlyList<string> KnownLosses = ["cross-entropy", "mse", "bce"];
    public static readonly IReadOnlyList<string> KnownSchemes = ["ps", "allreduce"];
    public const string SyncBsp = "bsp";
    public static readonly IReadOnlyList<string> KnownSyncModes = [SyncBsp, "ssp", "asp"];

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
    /// <summary>
    /// Scheme "ps": the most ranks the job grows to by admitting workers that start while it
    /// runs; 0: <see cref="Workers"/> (lost workers are replaced, the job does not grow).
    /// </summary>
    public int MaxWorkers { get; init; }
    /// <summary>Scheme ps, BSP: fixed per-rank slices of each batch instead of shard leases (see coordinator.proto static_plan).</summary>
    public bool StaticPlan { get; init; }
    public string Scheme { get; init; } = "ps";
    /// <summary>Scheme "allreduce": bytes of gradient per ring pass; 0: <see cref="BucketBytesDefault"/>.</summary>
    public int BucketBytes { get; init; }
    public const int BucketBytesDefault = 32 << 20;
    /// <summary>
    /// Scheme "ps": how the servers combine the workers' pushes. bsp: a barrier each step (every
    /// rank's gradient averaged into one update); ssp: each push applied as it arrives, and no
    /// worker more than <see cref="Staleness"/> steps ahead of the slowest; asp: each push applied
    /// as it arrives, no bound.
    /// </summary>
    public string Sync { get; init; } = "bsp";
    /// <summary>Sync "ssp": how many steps a worker may run ahead of the slowest worker.</summary>
    public int Staleness { get; init; }
    public const int StalenessMax = 1_000;
    public long Seed { get; init; } = 1;
    /// <summary>Train on the first N samples only; 0: all.</summary>
    public int TrainLimit { get; init; }
    /// <summary>Evaluate on the first N test samples only; 0: all.</summary>
    public int TestLimit { get; init; }
    /// <summary>"auto" (CUDA when present), "cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; init; } = "auto";
    /// <summary>Training loss of a classifier: "cross-entropy", "mse" or "bce" (both against one-hot targets).</summary>
    public string Loss { get; init; } = "cross-entropy";
    /// <summary>Fine-tuning: a safetensors checkpoint on the workers to start from; null: fresh weights.</summary>
    public string? InitFrom { get; init; }
    /// <summary>Fine-tuning: parameter-name prefixes (e.g. "conv1") that stay as loaded.</summary>
    public IReadOnlyList<string> Freeze { get; init; } = [];
    /// <summary>Fine-tuning: keep the head (the last layer) freshly initialised instead of loading it.</summary>
    public bool ReplaceHead { get; init; }
    /// <summary>Where rank 0 writes the trained parameters (safetensors) after the last epoch; null: nowhere.</summary>
    public string? SaveTo { get; init; }
    /// <summary>Directory on rank 0's machine for the job's artefacts (a GAN's sample grids and losses); null: none written.</summary>
    public string? OutputDir { get; init; }
    /// <summary>A user's assembly (path on the workers) holding the task type; null: the built-in model zoo. Model and dataset are then the task's own.</summary>
    public string? AssemblyPath { get; init; }
    /// <summary>Full name (Namespace.Type) of the user's task type in <see cref="AssemblyPath"/>.</summary>
    public string? TaskType { get; init; }

    [System.Text.Json.Serialization.JsonIgnore]
    public bool IsUserTask => AssemblyPath is not null;

    [System.Text.Json.Serialization.JsonIgnore]
    public bool IsLanguageModel => LanguageModels.Contains(Model);
    /// <summary>Parameter-server shards the model is cut across.</summary>
    public int ParameterServers { get; init; } = 1;
    /// <summary>Element type of gradients and parameters on the wire: float32, bfloat16 or float16.</summary>
    public string WireDtype { get; init; } = "float32";
    /// <summary>Top-k sparsification of pushed gradients (fraction sent per partition, with error feedback); 0: off.</summary>
    public double TopKRatio { get; init; }

    public const int ParameterServersMax = 256;

    /// <summary>Every problem with this job, each naming the field, the value and what was expected.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (!IsUserTask && !KnownModels.Contains(Model))
            errors.Add($"model: '{Model}' is not a known model; expected one of {string.Join(", ", KnownModels)}");
        if (!IsUserTask && !KnownDatasets.Contains(Dataset))
            errors.Add($"dataset: '{Dataset}' is not a known dataset; expected one of {string.Join(", ", KnownDatasets)}");
        if (Epochs is <= 0 or > EpochsMax)
            errors.Add($"epochs: {Epochs} is out of range; expected 1 to {EpochsMax}");
        if (BatchSize is <= 0 or > BatchSizeMax)
            errors.Add($"batch-size: {BatchSize} is out of range; expected 1 to {BatchSizeMax}");
        if (Workers is <= 0 or > WorkersMax)
            errors.Add($"workers: {Workers} is out of range; expected 1 to {WorkersMax}");
        if (MaxWorkers != 0 && (MaxWorkers < Workers || MaxWorkers > WorkersMax))
            errors.Add($"max-workers: {MaxWorkers} is out of range; expected 0 (no growth) or {Workers} (workers) to {WorkersMax}");
        if (!KnownSchemes.Contains(Scheme))
            errors.Add($"scheme: '{Scheme}' is not supported; expected one of {string.Join(", ", KnownSchemes)}");
        if (BucketBytes < 0)
            errors.Add($"bucket-bytes: {BucketBytes} is out of range; expected 0 (default) or a positive count");
        if (!KnownSyncModes.Contains(Sync))
            errors.Add($"sync: '{Sync}' is not supported; expected one of {string.Join(", ", KnownSyncModes)}");
        if (Sync != "bsp" && Scheme != "ps")
            errors.Add($"sync: '{Sync}' needs scheme 'ps' (parameter servers); scheme '{Scheme}' synchronises every step");
        if (Staleness is < 0 or > StalenessMax)
            errors.Add($"staleness: {Staleness} is out of range; expected 0 to {StalenessMax}");
        else if (Staleness != 0 && Sync != "ssp")
            errors.Add($"staleness: {Staleness} applies to sync 'ssp' only; sync is '{Sync}'");
        if (TrainLimit < 0)
            errors.Add($"train-limit: {TrainLimit} is out of range; expected 0 (all) or a positive count");
        if (TestLimit < 0)
            errors.Add($"test-limit: {TestLimit} is out of range; expected 0 (all) or a positive count");
        if (ParameterServers is <= 0 or > ParameterServersMax)
            errors.Add($"ps: {ParameterServers} is out of range; expected 1 to {ParameterServersMax}");
        if (!Wire.ElementCodec.Names.Contains(WireDtype))
            errors.Add($"wire-dtype: '{WireDtype}' is not a wire type; expected one of {string.Join(", ", Wire.ElementCodec.Names)}");
        if (!(TopKRatio >= 0 && TopKRatio < 1))
            errors.Add($"topk: {TopKRatio} is out of range; expected 0 (off) or a fraction below 1");
        if (!DeviceNames.IsValid(Device))
            errors.Add($"device: '{Device}' is not a device; expected auto, cpu, cuda or cuda:N");
        errors.AddRange(Optimizer.Validate());
        errors.AddRange(ValidateTask());
        return errors;
    }

    private IEnumerable<string> ValidateUserTask()
    {
        if (AssemblyPath is { Length: 0 })
            yield return "assembly: empty; expected the path of a .NET assembly on the workers";
        if (IsUserTask && string.IsNullOrWhiteSpace(TaskType))
            yield return "type: missing; expected the full name (Namespace.Type) of the task type in the assembly";
        if (!IsUserTask && TaskType is not null)
            yield return $"type: '{TaskType}' given without an assembly; expected --assembly PATH with it";
        if (IsUserTask && Scheme == "allreduce")
            yield return "scheme: 'allreduce' is not supported for a task from a user's assembly; expected scheme ps";
    }

    private IEnumerable<string> ValidateTask()
    {
        foreach (string error in ValidateUserTask()) yield return error;
        if (IsUserTask) yield break;
        if (!KnownLosses.Contains(Loss))
            yield return $"loss: '{Loss}' is not a known loss; expected one of {string.Join(", ", KnownLosses)}";
        if (IsLanguageModel != (Dataset == "text") && KnownModels.Contains(Model) && KnownDatasets.Contains(Dataset))
            yield return $"dataset: '{Dataset}' does not fit model '{Model}'; the language models ({string.Join(", ", LanguageModels)}) train on 'text', the image models on the image datasets";
        if (IsLanguageModel && Loss != "cross-entropy")
            yield return $"loss: '{Loss}' does not fit language model '{Model}'; expected cross-entropy";
        if ((Freeze.Count > 0 || ReplaceHead) && string.IsNullOrEmpty(InitFrom))
            yield return "init-from: missing; freeze and replace-head fine-tune a checkpoint, expected a checkpoint path";
        if (GenerativeModels.Contains(Model) && !GanDatasets.Contains(Dataset) && KnownDatasets.Contains(Dataset))
            yield return $"dataset: '{Dataset}' does not fit model '{Model}'; expected one of {string.Join(", ", GanDatasets)} (28 x 28, one channel)";
        if (GenerativeModels.Contains(Model) && Scheme == "allreduce")
            yield return $"scheme: 'allreduce' is not supported for model '{Model}' (its two parameter groups need per-group optimizers on parameter servers); expected scheme ps";
        if (GenerativeModels.Contains(Model) && Loss != "cross-entropy")
            yield return $"loss: '{Loss}' does not apply to model '{Model}', which trains with its own binary cross-entropy; leave the loss unset";
        if (Freeze.Count > 0 && Optimizer.WeightDecay > 0)
            yield return $"freeze: frozen layers would still move under weight-decay {Optimizer.WeightDecay}; expected weight-decay 0";
    }

    public Protos.JobSpec ToProto()
    {
        var proto = ToProtoCore();
        proto.Loss = Loss;
        proto.InitFrom = InitFrom ?? "";
        proto.Freeze.AddRange(Freeze);
        proto.ReplaceHead = ReplaceHead;
        proto.SaveTo = SaveTo ?? "";
        proto.OutputDir = OutputDir ?? "";
        proto.AssemblyPath = AssemblyPath ?? "";
        proto.TaskType = TaskType ?? "";
        return proto;
    }

    private Protos.JobSpec ToProtoCore() => new()
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
        WireDtype = WireDtype,
        TopkRatio = TopKRatio,
        ParameterServers = ParameterServers,
        Scheme = Scheme,
        BucketBytes = BucketBytes,
        Sync = Sync,
        Staleness = Staleness,
        WorkersMax = MaxWorkers,
        StaticPlan = StaticPlan,
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
        Loss = spec.Loss.Length == 0 ? "cross-entropy" : spec.Loss,
        InitFrom = spec.InitFrom.Length == 0 ? null : spec.InitFrom,
        // The shared empty list when none, so that a spec without freezing round-trips equal (lists compare by reference in record equality).
        Freeze = spec.Freeze.Count == 0 ? [] : [.. spec.Freeze],
        ReplaceHead = spec.ReplaceHead,
        SaveTo = spec.SaveTo.Length == 0 ? null : spec.SaveTo,
        OutputDir = spec.OutputDir.Length == 0 ? null : spec.OutputDir,
        AssemblyPath = spec.AssemblyPath.Length == 0 ? null : spec.AssemblyPath,
        TaskType = spec.TaskType.Length == 0 ? null : spec.TaskType,
        WireDtype = spec.WireDtype.Length == 0 ? "float32" : spec.WireDtype,
        TopKRatio = spec.TopkRatio,
        ParameterServers = Math.Max(1, spec.ParameterServers),
        Scheme = spec.Scheme.Length == 0 ? "ps" : spec.Scheme,
        BucketBytes = spec.BucketBytes,
        Sync = spec.Sync.Length == 0 ? "bsp" : spec.Sync,
        Staleness = spec.Staleness,
        MaxWorkers = spec.WorkersMax,
        StaticPlan = spec.StaticPlan,
    };
}

/// <summary>Device names a job or a worker may ask for.</summary>
public static class DeviceNames
{
    public static bool IsValid(string device) =>
        device is "auto" or "cpu" or "cuda" ||
        (device.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(device.AsSpan(5), out int index) && index >= 0);
}
