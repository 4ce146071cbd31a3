using System.CommandLine;
using Cluster.Shared.Jobs;
using Cluster.Shared.Optimizers;

namespace Cluster.Cli.Commands;

/// <summary>The options that describe a job, shared by `cluster local` and `cluster submit`.</summary>
public sealed class JobOptions
{
    private static readonly JobSpecification Defaults = new();

    public Option<string> Model { get; } = new("--model") { Description = $"Model: {string.Join(", ", JobSpecification.KnownModels)}", DefaultValueFactory = _ => Defaults.Model };
    public Option<string> Dataset { get; } = new("--dataset") { Description = "Dataset: fashion-mnist or mnist", DefaultValueFactory = _ => Defaults.Dataset };
    public Option<string?> Data { get; } = new("--data") { Description = "Directory with the dataset's IDX files (raw or .gz); default: data/<dataset> in the repository, then /usr/share/datasets/<dataset>" };
    public Option<int> Epochs { get; } = new("--epochs") { Description = "Passes over the training set", DefaultValueFactory = _ => Defaults.Epochs };
    public Option<int> BatchSize { get; } = new("--batch-size") { Description = "Samples per worker per step", DefaultValueFactory = _ => Defaults.BatchSize };
    public Option<int> Workers { get; } = new("--workers") { Description = "Number of workers", DefaultValueFactory = _ => Defaults.Workers };
    public Option<string> Optimizer { get; } = new("--optimizer") { Description = "adam or sgd", DefaultValueFactory = _ => Defaults.Optimizer.Kind };
    public Option<double> LearningRate { get; } = new("--lr") { Description = "Learning rate", DefaultValueFactory = _ => Defaults.Optimizer.LearningRate };
    public Option<double> Momentum { get; } = new("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.0 };
    public Option<double> WeightDecay { get; } = new("--weight-decay") { Description = "L2 penalty", DefaultValueFactory = _ => 0.0 };
    public Option<long> Seed { get; } = new("--seed") { Description = "Seed of initial weights and data order", DefaultValueFactory = _ => Defaults.Seed };
    public Option<string> Device { get; } = new("--device") { Description = "auto, cpu, cuda or cuda:N", DefaultValueFactory = _ => Defaults.Device };
    public Option<int> TrainLimit { get; } = new("--train-limit") { Description = "Train on the first N samples only (0: all)", DefaultValueFactory = _ => 0 };
    public Option<string> Scheme { get; } = new("--scheme") { Description = $"How gradients are combined: {string.Join(", ", JobSpecification.KnownSchemes)}", DefaultValueFactory = _ => Defaults.Scheme };
    public Option<int> BucketBytes { get; } = new("--bucket-bytes") { Description = "Scheme allreduce: bytes of gradient per ring pass (0: 32 MiB)", DefaultValueFactory = _ => 0 };
    public Option<int> TestLimit { get; } = new("--test-limit") { Description = "Evaluate on the first N test samples only (0: all)", DefaultValueFactory = _ => 0 };

    public void AddTo(Command command)
    {
        foreach (Option option in new Option[] { Model, Dataset, Data, Epochs, BatchSize, Workers, Optimizer, LearningRate, Momentum, WeightDecay, Seed, Device, TrainLimit, TestLimit, Scheme, BucketBytes })
            command.Options.Add(option);
    }

    public JobSpecification Read(ParseResult parse) => new()
    {
        Model = parse.GetValue(Model)!,
        Dataset = parse.GetValue(Dataset)!,
        DataDir = parse.GetValue(Data) is { } dir ? Path.GetFullPath(dir) : null,
        Epochs = parse.GetValue(Epochs),
        BatchSize = parse.GetValue(BatchSize),
        Workers = parse.GetValue(Workers),
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
        Scheme = parse.GetValue(Scheme)!,
        BucketBytes = parse.GetValue(BucketBytes),
    };
}
