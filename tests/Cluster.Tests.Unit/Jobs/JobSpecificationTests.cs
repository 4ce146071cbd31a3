using Cluster.Shared.Jobs;
using Cluster.Shared.Optimizers;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>
/// <see cref="JobSpecification"/> and <see cref="OptimizerSettings"/>: validation messages that
/// start with the field and quote the bad value, and the protobuf round trip.
/// </summary>
[Trait("Tier", "unit")]
public sealed class JobSpecificationTests
{
    [Fact]
    public void Defaults_are_valid_and_match_the_documented_values()
    {
        var spec = new JobSpecification();

        Assert.Empty(spec.Validate());
        Assert.Equal(("cnn", "fashion-mnist", 2, 64, 2, "ps", "bsp", "auto"),
            (spec.Model, spec.Dataset, spec.Epochs, spec.BatchSize, spec.Workers, spec.Scheme, spec.Sync, spec.Device));
        Assert.Equal(("adam", 1e-3), (spec.Optimizer.Kind, spec.Optimizer.LearningRate));
    }

    [Theory]
    [InlineData("model", "resnet9000")]
    [InlineData("dataset", "imagenet")]
    [InlineData("epochs", "0")]
    [InlineData("epochs", "-1")]
    [InlineData("epochs", "10001")]
    [InlineData("batch-size", "0")]
    [InlineData("batch-size", "65537")]
    [InlineData("workers", "0")]
    [InlineData("workers", "1025")]
    [InlineData("lr", "0")]
    [InlineData("lr", "-0.1")]
    [InlineData("lr", "NaN")]
    [InlineData("lr", "Infinity")]
    [InlineData("optimizer", "adagrad")]
    [InlineData("device", "tpu")]
    [InlineData("device", "cuda:-1")]
    [InlineData("device", "cuda:x")]
    [InlineData("scheme", "foo")]
    [InlineData("sync", "async")]
    [InlineData("train-limit", "-5")]
    [InlineData("test-limit", "-1")]
    public void A_bad_field_yields_one_error_starting_with_the_field_and_quoting_the_value(string field, string value)
    {
        var spec = WithField(field, value);

        string error = Assert.Single(spec.Validate());

        Assert.StartsWith(field + ": ", error, StringComparison.Ordinal);
        Assert.Contains(value, error, StringComparison.Ordinal);
        Assert.Contains("expected", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Every_bad_field_is_reported_at_once()
    {
        var spec = new JobSpecification { Model = "resnet9000", Epochs = 0, Optimizer = new OptimizerSettings { Kind = "adagrad" } };

        var errors = spec.Validate();

        Assert.Equal(["model", "epochs", "optimizer"], errors.Select(e => e[..e.IndexOf(':', StringComparison.Ordinal)]));
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("cuda")]
    [InlineData("cuda:0")]
    [InlineData("cuda:7")]
    public void Known_device_names_are_valid(string device)
    {
        Assert.True(DeviceNames.IsValid(device));
        Assert.Empty(new JobSpecification { Device = device }.Validate());
    }

    [Fact]
    public void Nesterov_without_momentum_is_rejected()
    {
        var settings = new OptimizerSettings { Kind = "sgd", Nesterov = true };

        Assert.Equal(["nesterov: true needs momentum > 0 and dampening 0"], settings.Validate());
        Assert.Empty((settings with { Momentum = 0.9 }).Validate());
    }

    [Fact]
    public void Creating_an_unknown_optimizer_throws_naming_it()
    {
        var error = Assert.Throws<ArgumentException>(() => new OptimizerSettings { Kind = "adagrad" }.Create(10));

        Assert.StartsWith("optimizer: 'adagrad' is not a known optimizer; expected one of adam, adamw, sgd", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("adam", typeof(AdamOptimizer))]
    [InlineData("sgd", typeof(SgdOptimizer))]
    public void Known_optimizers_are_created_by_kind(string kind, Type expected)
    {
        Assert.IsType(expected, new OptimizerSettings { Kind = kind }.Create(10));
    }

    [Fact]
    public void A_fully_customised_spec_round_trips_through_protobuf()
    {
        var spec = new JobSpecification
        {
            Model = "mlp",
            Dataset = "mnist",
            DataDir = "/srv/data/mnist",
            Epochs = 7,
            BatchSize = 128,
            Optimizer = new OptimizerSettings
            {
                Kind = "sgd", LearningRate = 0.05, Beta1 = 0.8, Beta2 = 0.95, Epsilon = 1e-6,
                WeightDecay = 5e-4, Momentum = 0.9, Dampening = 0, Nesterov = true,
            },
            Workers = 3,
            Seed = -123_456_789_012,
            TrainLimit = 1000,
            TestLimit = 500,
            Device = "cuda:1",
        };

        var proto = spec.ToProto();
        var back = JobSpecification.FromProto(proto, worldSize: 3);

        Assert.Equal(spec, back);
        Assert.Equal("/srv/data/mnist", proto.DataDir);
        Assert.Equal(0.05, proto.Optimizer.LearningRate);
        Assert.True(proto.Optimizer.Nesterov);
    }

    [Fact]
    public void Default_spec_round_trips_with_a_null_data_dir_sent_as_empty()
    {
        var spec = new JobSpecification();

        var proto = spec.ToProto();

        Assert.Equal("", proto.DataDir);
        Assert.Equal(spec, JobSpecification.FromProto(proto, spec.Workers));
        Assert.Null(JobSpecification.FromProto(proto, spec.Workers).DataDir);
    }

    [Fact]
    public void World_size_comes_from_the_assignment_not_the_proto()
    {
        var back = JobSpecification.FromProto(new JobSpecification { Workers = 2 }.ToProto(), worldSize: 5);

        Assert.Equal(5, back.Workers);
    }

    [Fact]
    public void Optimizer_settings_round_trip_through_protobuf()
    {
        var settings = new OptimizerSettings { Kind = "adam", LearningRate = 3e-4, Beta1 = 0.85, Beta2 = 0.98, Epsilon = 1e-7, WeightDecay = 0.01 };

        Assert.Equal(settings, OptimizerSettings.FromProto(settings.ToProto()));
    }

    private static JobSpecification WithField(string field, string value)
    {
        var spec = new JobSpecification();
        int Int() => int.Parse(value, System.Globalization.CultureInfo.InvariantCulture);
        return field switch
        {
            "model" => spec with { Model = value },
            "dataset" => spec with { Dataset = value },
            "epochs" => spec with { Epochs = Int() },
            "batch-size" => spec with { BatchSize = Int() },
            "workers" => spec with { Workers = Int() },
            "lr" => spec with { Optimizer = new OptimizerSettings { LearningRate = double.Parse(value, System.Globalization.CultureInfo.InvariantCulture) } },
            "optimizer" => spec with { Optimizer = new OptimizerSettings { Kind = value } },
            "device" => spec with { Device = value },
            "scheme" => spec with { Scheme = value },
            "sync" => spec with { Sync = value },
            "train-limit" => spec with { TrainLimit = Int() },
            "test-limit" => spec with { TestLimit = Int() },
            _ => throw new ArgumentOutOfRangeException(nameof(field), field, "no such field in this test"),
        };
    }
}
