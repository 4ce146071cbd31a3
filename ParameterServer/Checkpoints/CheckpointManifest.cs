using MessagePack;

namespace Cluster.ParameterServer.Checkpoints;

/// <summary>
/// The MessagePack half of a parameter-server checkpoint: the job's metadata and the optimizer
/// state; the weights are in the safetensors file next to it, whose SHA-256 this records.
/// Explicit integer keys: a field is never renumbered, new ones take new keys.
/// </summary>
[MessagePackObject]
public sealed class CheckpointManifest
{
    /// <summary>The layout of these fields; a reader refuses a format it does not know.</summary>
    [Key(0)] public int Format { get; set; }
    [Key(1)] public string JobId { get; set; } = "";
    /// <summary>The version (= step count) of the weights and state.</summary>
    [Key(2)] public long Version { get; set; }
    [Key(3)] public int WorldSize { get; set; }
    /// <summary>This server's key range of the model's flat vector: first element and length.</summary>
    [Key(4)] public long RangeStart { get; set; }
    [Key(5)] public int ElementCount { get; set; }
    [Key(6)] public int PartitionElements { get; set; }
    [Key(7)] public OptimizerRecord Optimizer { get; set; } = new();
    /// <summary>The whole model's parameters in flat-vector order.</summary>
    [Key(8)] public List<TensorRecord> Layout { get; set; } = [];
    /// <summary>Per-element optimizer state, each as ElementCount little-endian float32s.</summary>
    [Key(9)] public List<StateRecord> OptimizerState { get; set; } = [];
    /// <summary>SHA-256 (lower-case hex) of the whole safetensors file of the weights.</summary>
    [Key(10)] public string ParametersSha256 { get; set; } = "";
    [Key(11)] public long RejectedGradients { get; set; }
    [Key(12)] public long WrittenAtUnixMillis { get; set; }
    /// <summary>The ranks behind the last applied steps (absent from checkpoints written before it was added: empty).</summary>
    [Key(13)] public List<AppliedStepRecord> AppliedSteps { get; set; } = [];
    /// <summary>The barrier's joined ranks and the step each is a member from (absent from older checkpoints: none).</summary>
    [Key(14)] public List<RankStepRecord> JoinSteps { get; set; } = [];
    /// <summary>The barrier's removed ranks and the first step each is no longer a member of.</summary>
    [Key(15)] public List<RankStepRecord> LeaveSteps { get; set; } = [];
}

/// <summary>Update rule and hyperparameters (parameter_server.proto's OptimizerConfig).</summary>
[MessagePackObject]
public sealed class OptimizerRecord
{
    [Key(0)] public string Kind { get; set; } = "";
    [Key(1)] public double LearningRate { get; set; }
    [Key(2)] public double Beta1 { get; set; }
    [Key(3)] public double Beta2 { get; set; }
    [Key(4)] public double Epsilon { get; set; }
    [Key(5)] public double WeightDecay { get; set; }
    [Key(6)] public double Momentum { get; set; }
    [Key(7)] public double Dampening { get; set; }
    [Key(8)] public bool Nesterov { get; set; }
}

/// <summary>One parameter of the model: name and shape.</summary>
[MessagePackObject]
public sealed class TensorRecord
{
    [Key(0)] public string Name { get; set; } = "";
    [Key(1)] public long[] Shape { get; set; } = [];
}

/// <summary>One optimizer buffer (torch's name) as raw little-endian float32 bytes.</summary>
[MessagePackObject]
public sealed class StateRecord
{
    [Key(0)] public string Name { get; set; } = "";
    [Key(1)] public byte[] Values { get; set; } = [];
}

/// <summary>Which ranks' pushes made up one applied step.</summary>
[MessagePackObject]
public sealed class AppliedStepRecord
{
    [Key(0)] public long Step { get; set; }
    [Key(1)] public int[] Ranks { get; set; } = [];
}

/// <summary>A rank and a step (when it joined, or left, the barrier).</summary>
[MessagePackObject]
public sealed class RankStepRecord
{
    [Key(0)] public int Rank { get; set; }
    [Key(1)] public long Step { get; set; }
}
