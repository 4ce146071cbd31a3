using Cluster.Sdk;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Worker.Tasks;
using Cluster.Worker.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Unit.Training;

/// <summary>
/// A worker's flat parameter buffer shared with its model (<see cref="ParameterVector.ShareParameters"/>):
/// a write into the buffer is a write into the model, and training through it gives bit for bit
/// the model that copying the buffer into the model after every update gives.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ParameterVectorTests
{
    [Fact]
    public void A_shared_buffer_holds_the_parameters_and_its_writes_reach_the_model()
    {
        using var model = ModelZoo.Create("mlp", seed: 5);
        float[] expected = Parameters(model);
        using var vector = new ParameterVector(model);
        var buffer = new float[vector.ElementCount];

        Assert.True(vector.ShareParameters(buffer));

        Assert.Equal(expected, buffer);
        Assert.Equal(expected, Parameters(model));
        buffer[0] = 42f;
        buffer[^1] = -7f;
        Assert.Equal(42f, model.parameters().First().flatten()[0].item<float>());
        Assert.Equal(-7f, model.parameters().Last().flatten()[^1].item<float>());
        // Writing the buffer into the model it already is changes nothing.
        vector.WriteParameters(System.Runtime.InteropServices.MemoryMarshal.AsBytes(buffer.AsSpan()));
        Assert.Equal(buffer, Parameters(model));
    }

    [Fact]
    public void A_small_shared_buffer_stays_the_model_when_the_collector_compacts_the_heap()
    {
        // 15 floats: a small-object-heap array, which a compacting collection moves unless it is pinned.
        using var model = nn.Linear(4, 3);
        using var vector = new ParameterVector(model);
        var buffer = new float[vector.ElementCount];
        Assert.True(vector.ShareParameters(buffer));

        for (int i = 0; i < 3; i++)
        {
            _ = new byte[1000];
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        }
        Array.Fill(buffer, 0.5f);

        using var output = model.forward(torch.ones(1, 4));
        Assert.Equal(Enumerable.Repeat(2.5f, 3), output.data<float>().ToArray());
    }

    [Fact]
    public void The_gradients_read_in_place_are_those_copied_out_with_zeros_for_a_parameter_without_one()
    {
        using var first = nn.Linear(4, 3);
        using var unused = nn.Linear(3, 2);
        using var model = nn.Sequential(("first", first), ("unused", unused));
        using var vector = new ParameterVector(model);
        first.forward(torch.arange(8, dtype: ScalarType.Float32).reshape(2, 4)).square().sum().backward();
        var copied = new float[vector.ElementCount];
        vector.ReadGradients(Bytes(copied));

        var inPlace = new float[vector.ElementCount];
        using (var gradient = vector.Gradients(new float[vector.ElementCount]))
            gradient.CopyTo(inPlace);

        Assert.Equal(copied, inPlace);
        Assert.Contains(inPlace, g => g != 0);
        Assert.All(inPlace[15..], g => Assert.Equal(0f, g));
    }

    [Theory]
    [InlineData("mlp")]
    [InlineData("cnn")]
    [InlineData("resnet")]
    [InlineData("gan")]
    [InlineData("lstm")]
    [InlineData("transformer")]
    public void Training_through_a_shared_buffer_gives_the_model_copies_give(string name)
    {
        using var shared = CreateTask(name);
        using var copied = CreateTask(name);
        using var sharedVector = new ParameterVector(shared.Model);
        using var copiedVector = new ParameterVector(copied.Model);
        var sharedParameters = new float[sharedVector.ElementCount];
        var copiedParameters = new float[copiedVector.ElementCount];
        // The same start whatever other tests draw from libtorch's global generator meanwhile.
        copiedVector.ReadParameters(Bytes(copiedParameters));
        sharedVector.WriteParameters(Bytes(copiedParameters));
        Assert.True(sharedVector.ShareParameters(sharedParameters));

        for (int step = 0; step < 3; step++)
        {
            int[] batch = [.. Enumerable.Range(step * 8, 8)];
            Assert.Equal(shared.ComputeGradient(batch), copied.ComputeGradient(batch));
            Update(sharedVector, sharedParameters);
            Update(copiedVector, copiedParameters);
            copiedVector.WriteParameters(Bytes(copiedParameters));
        }

        Assert.Equal(copiedParameters, sharedParameters);
        Assert.Equal(Parameters(copied.Model), Parameters(shared.Model));
        Assert.Equal(copied.Evaluate(0, 16).LossSum, shared.Evaluate(0, 16).LossSum);
    }

    /// <summary>A plain SGD step on the flat buffer, as a pull would overwrite it.</summary>
    private static void Update(ParameterVector vector, float[] parameters)
    {
        var gradients = new float[parameters.Length];
        vector.ReadGradients(Bytes(gradients));
        System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(gradients, -0.05f, parameters, parameters);
    }

    private static ITrainingTask CreateTask(string name)
    {
        if (name is "lstm" or "transformer")
        {
            var tokens = Enumerable.Range(0, 2_000).Select(i => i * 7 % 13).ToArray();
            var text = new TextDataset(tokens, context: 16, stride: 16);
            return new LanguageModelTask(ModelZoo.Create(name, seed: 9, ModelShape.Text(13, 16)), text, text, 13, torch.CPU);
        }
        var data = SyntheticDataset.Create();
        return name == "gan"
            ? new GanTask((Dcgan)ModelZoo.Create("gan", seed: 9), data.Train.Take(64), data.Test.Take(16), seed: 9, torch.CPU)
            : new ImageClassificationTask(ModelZoo.Create(name, seed: 9, data.Train.Height, data.Train.Width, data.Train.ClassCount),
                data.Train.Take(64), data.Test.Take(16), new Losses("cross-entropy"), torch.CPU);
    }

    private static float[] Parameters(nn.Module model) =>
        [.. model.parameters().SelectMany(p => p.detach().contiguous().flatten().data<float>().ToArray())];

    private static Span<byte> Bytes(float[] values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan());
}
