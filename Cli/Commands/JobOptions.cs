using System.CommandLine;
using Cluster.Shared.Jobs;
using Cluster.Shared.Optimizers;

namespace Cluster.Cli.Commands;

/// <summary>The options that describe a job, shared by `cluster local` and `cluster submit`.</summary>
public sealed class JobOptions
{
    private static readonly JobSpecification Defaults = new();

    public Option<string> Model { get; } = new("--model") { Description = $"Model: {string.Join(", ", JobSpecification.KnownModels)}", DefaultValueFactory = _ => Defaults.Model };
    public Option<string> Dataset { get; } = new("--dataset") { Description = $"Dataset: {string.Join(", ", JobSpecification.KnownDatasets)}", DefaultValueFactory = _ => Defaults.Dataset };
    public Option<string?> Data { get; } = new("--data") { Description = "Directory with the dataset's files (IDX raw or .gz; CIFAR-10 binary; for text a file or directory of plain text); default: data/<dataset> in the repository, then /usr/share/datasets/<dataset>; text: /usr/share/common-licenses" };
    public Option<int> Epochs { get; } = new("--epochs") { Description = "Passes over the training set", DefaultValueFactory = _ => Defaults.Epochs };
    public Option<int> BatchSize { get; } = new("--batch-size") { Description = "Samples per worker per step", DefaultValueFactory = _ => Defaults.BatchSize };
    public Option<int> Workers { get; } = new("--workers") { Description = "Number of workers", DefaultValueFactory = _ => Defaults.Workers };
    public Option<bool> StaticPlan { get; } = new("--static-plan") { Description = "Scheme ps: each rank trains its fixed slice of every batch instead of leasing shards from the coordinator (no per-step lease call; a lost worker's remaining samples of the epoch go untrained)" };
    public Option<int> MaxWorkers { get; } = new("--max-workers") { Description = "Scheme ps: admit workers that start while the job runs, up to this many ranks (0: only to replace lost ones)", DefaultValueFactory = _ => 0 };
    public Option<string> Optimizer { get; } = new("--optimizer") { Description = "adam, adamw or sgd", DefaultValueFactory = _ => Defaults.Optimizer.Kind };
    public Option<double> LearningRate { get; } = new("--lr") { Description = "Learning rate", DefaultValueFactory = _ => Defaults.Optimizer.LearningRate };
    public Option<double> Momentum { get; } = new("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.0 };
    public Option<double> WeightDecay { get; } = new("--weight-decay") { Description = "L2 penalty", DefaultValueFactory = _ => 0.0 };
    public Option<long> Seed { get; } = new("--seed") { Description = "Seed of initial weights and data order", DefaultValueFactory = _ => Defaults.Seed };
    public Option<string> Device { get; } = new("--device") { Description = "auto, cpu, cuda or cuda:N", DefaultValueFactory = _ => Defaults.Device };
    public Option<int> TrainLimit { get; } = new("--train-limit") { Description = "Train on the first N samples only (0: all)", DefaultValueFactory = _ => 0 };
    public Option<string> Scheme { get; } = new("--scheme") { Description = $"How gradients are combined: {string.Join(", ", JobSpecification.KnownSchemes)}", DefaultValueFactory = _ => Defaults.Scheme };
    public Option<int> BucketBytes { get; } = new("--bucket-bytes") { Description = "Scheme allreduce: bytes of gradient per ring pass (0: 32 MiB)", DefaultValueFactory = _ => 0 };
    public Option<int> TestLimit { get; } = new("--test-limit") { Description = "Evaluate on the first N test samples only (0: all)", DefaultValueFactory = _ => 0 };
    public Option<string> Loss { get; } = new("--loss") { Description = $"Classifier loss: {string.Join(", ", JobSpecification.KnownLosses)}", DefaultValueFactory = _ => Defaults.Loss };
    public Option<string?> InitFrom { get; } = new("--init-from") { Description = "Fine-tune: start from this safetensors checkpoint (a path on the workers)" };
    public Option<string[]> Freeze { get; } = new("--freeze") { Description = "Fine-tune: keep parameters whose names start with these prefixes as loaded (e.g. conv1,conv2)", AllowMultipleArgumentsPerToken = true };
    public Option<bool> ReplaceHead { get; } = new("--replace-head") { Description = "Fine-tune: do not load the last layer; train it from fresh weights" };
    public Option<string?> SaveTo { get; } = new("--save-to") { Description = "Write the trained parameters as safetensors to this path (on rank 0's machine) after the last epoch" };
    public Option<string?> Assembly { get; } = new("--assembly") { Description = "Your own task: a .NET assembly (path on the workers) built against Cluster.Sdk; --model and --dataset are then unused" };
    public Option<string?> TaskType { get; } = new("--type") { Description = "With --assembly: the full name (Namespace.Type) of your class implementing Cluster.Sdk.ITrainingTask" };
    public Option<string?> OutputDir { get; } = new("--output-dir") { Description = "Directory (on rank 0's machine) for the job's artefacts: the gan's sample grids (PNG) and losses" };

    public Option<int> ParameterServers { get; } = new("--ps") { Description = "Parameter-server shards the model is cut across", DefaultValueFactory = _ => 1 };
    public Option<string> WireDtype { get; } = new("--wire-dtype") { Description = "Gradients and parameters on the wire: float32, bfloat16 or float16", DefaultValueFactory = _ => "float32" };
    public Option<double> TopK { get; } = new("--topk") { Description = "Send only this fraction of each gradient partition (largest first, error feedback); 0: off", DefaultValueFactory = _ => 0.0 };

    public Option<string> Sync { get; } = new Option<string>("--sync") { Description = "Scheme ps: bsp (barrier each step), ssp (bounded staleness) or asp (no barrier)", DefaultValueFactory = _ => "bsp" }
        .AcceptOnlyFromAmong([.. JobSpecification.KnownSyncModes]);
    public Option<int> Staleness { get; } = new("--staleness") { Description = "Sync ssp: steps a worker may run ahead of the slowest one", DefaultValueFactory = _ => 0 };

    public void AddTo(Command command)
    {
        foreach (Option option in new Option[] { Model, Dataset, Data, Epochs, BatchSize, Workers, MaxWorkers, StaticPlan, Optimizer, LearningRate, Momentum, WeightDecay, Seed, Device, TrainLimit, TestLimit, ParameterServers, WireDtype, TopK, Loss, InitFrom, Freeze, ReplaceHead, SaveTo, OutputDir, Assembly, TaskType, Scheme, BucketBytes, Sync, Staleness })
            command.Options.Add(option);
    }

    public JobSpecification Read(ParseResult parse)
    {
        var spec = ReadOptions(parse);
        if (!JobSpecification.GenerativeModels.Contains(spec.Model)) return spec;
        // DCGAN's hyperparameters unless given: Adam with lr 2e-4 and betas 0.5, 0.999.
        bool lrGiven = parse.GetResult(LearningRate) is { Implicit: false };
        return spec with
        {
            Optimizer = spec.Optimizer with { Beta1 = 0.5, LearningRate = lrGiven ? spec.Optimizer.LearningRate : 2e-4 },
        };
    }

    private JobSpecification ReadOptions(ParseResult parse) => new()
    {
        Model = parse.GetValue(Model)!,
        Dataset = parse.GetValue(Dataset)!,
        DataDir = parse.GetValue(Data) is { } dir ? Path.GetFullPath(dir) : null,
        Epochs = parse.GetValue(Epochs),
        BatchSize = parse.GetValue(BatchSize),
        Workers = parse.GetValue(Workers),
        MaxWorkers = parse.GetValue(MaxWorkers),
        StaticPlan = parse.GetValue(StaticPlan),
        Optimizer = new OptimizerSettings
        {
            Kind = parse.GetValue(Optimizer)!,
            LearningRate = parse.GetValue(LearningRate),
            Momentum = parse.GetValue(Momentum),
            WeightDecay = parse.GetValue(WeightDecay),
        },
        Seed = parse.GetValue(Seed),
        Device = parse.GetValue(Device)!,
        TrainLimit = parse.GetValue(TrainLimit),
        TestLimit = parse.GetValue(TestLimit),
        ParameterServers = parse.GetValue(ParameterServers),
        WireDtype = parse.GetValue(WireDtype)!,
        TopKRatio = parse.GetValue(TopK),
        Loss = parse.GetValue(Loss)!,
        InitFrom = parse.GetValue(InitFrom) is { } from ? Path.GetFullPath(from) : null,
        Freeze = [.. (parse.GetValue(Freeze) ?? []).SelectMany(f => f.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))],
        ReplaceHead = parse.GetValue(ReplaceHead),
        SaveTo = parse.GetValue(SaveTo) is { } to ? Path.GetFullPath(to) : null,
        OutputDir = parse.GetValue(OutputDir) is { } output ? Path.GetFullPath(output) : null,
        AssemblyPath = parse.GetValue(Assembly) is { } assembly ? Path.GetFullPath(assembly) : null,
        TaskType = parse.GetValue(TaskType),
        Scheme = parse.GetValue(Scheme)!,
        BucketBytes = parse.GetValue(BucketBytes),
        Sync = parse.GetValue(Sync)!,
        Staleness = parse.GetValue(Staleness),
    };
}
