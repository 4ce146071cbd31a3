using Cluster.Shared.Jobs;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>The job fields of the model zoo, losses and fine-tuning: validation and the protobuf round trip.</summary>
[Trait("Tier", "unit")]
public sealed class ModelJobSpecificationTests
{
    [Theory]
    [InlineData("lstm", "fashion-mnist", "cross-entropy", "dataset: 'fashion-mnist' does not fit model 'lstm'")]
    [InlineData("cnn", "text", "cross-entropy", "dataset: 'text' does not fit model 'cnn'")]
    [InlineData("transformer", "text", "mse", "loss: 'mse' does not fit language model 'transformer'")]
    [InlineData("mlp", "synthetic", "hinge", "loss: 'hinge' is not a known loss")]
    [InlineData("gan", "cifar10", "cross-entropy", "dataset: 'cifar10' does not fit model 'gan'")]
    [InlineData("gan", "fashion-mnist", "mse", "loss: 'mse' does not apply to model 'gan'")]
    public void Models_datasets_and_losses_that_do_not_fit_are_refused(string model, string dataset, string loss, string expected)
    {
        var errors = new JobSpecification { Model = model, Dataset = dataset, Loss = loss }.Validate();
        Assert.Contains(errors, e => e.StartsWith(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void Freezing_needs_a_checkpoint_and_no_weight_decay()
    {
        var errors = new JobSpecification { Freeze = ["conv1"], Optimizer = new() { WeightDecay = 1e-4 } }.Validate();
        Assert.Contains(errors, e => e.StartsWith("init-from: missing", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("freeze: frozen layers would still move under weight-decay", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("resnet", "cifar10")]
    [InlineData("lstm", "text")]
    [InlineData("transformer", "text")]
    [InlineData("mlp", "synthetic")]
    [InlineData("gan", "fashion-mnist")]
    public void Every_model_has_a_valid_job(string model, string dataset) =>
        Assert.Empty(new JobSpecification { Model = model, Dataset = dataset }.Validate());

    [Fact]
    public void The_gan_refuses_the_allreduce_scheme() =>
        Assert.Contains(new JobSpecification { Model = "gan", Scheme = "allreduce" }.Validate(),
            e => e.StartsWith("scheme: 'allreduce' is not supported for model 'gan'", StringComparison.Ordinal));

    [Fact]
    public void The_new_fields_survive_the_protobuf_round_trip()
    {
        var spec = new JobSpecification
        {
            Model = "resnet", Dataset = "cifar10", Loss = "bce", InitFrom = "/tmp/a.safetensors", Freeze = ["stem", "layer1"],
            ReplaceHead = true, SaveTo = "/tmp/b.safetensors", OutputDir = "/tmp/out",
        };
        var back = JobSpecification.FromProto(spec.ToProto(), spec.Workers);
        Assert.Equal((spec.Loss, spec.InitFrom, spec.ReplaceHead, spec.SaveTo), (back.Loss, back.InitFrom, back.ReplaceHead, back.SaveTo));
        Assert.Equal(spec.Freeze, back.Freeze);
        Assert.Equal(spec.OutputDir, back.OutputDir);
        var plain = JobSpecification.FromProto(new JobSpecification().ToProto(), 2);
        Assert.Equal(("cross-entropy", null, null), (plain.Loss, plain.InitFrom, plain.SaveTo));
        Assert.Empty(plain.Freeze);
    }
}
