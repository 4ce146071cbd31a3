using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Cluster.Shared.Jobs;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Unit.Models;

/// <summary>Safetensors checkpoints: the bytes follow the format, and loading restores, skips the head and freezes as asked.</summary>
[Trait("Tier", "unit")]
public sealed class CheckpointTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("checkpoint-tests-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static float[] Values(Tensor tensor) => tensor.detach().cpu().contiguous().data<float>().ToArray();

    [Fact]
    public void A_checkpoint_is_a_safetensors_file_that_a_plain_json_reader_understands()
    {
        using var model = ModelZoo.Create("resnet", seed: 2, ModelShape.Image(1, 28, 28, 10));
        string path = Path.Combine(_directory, "resnet.safetensors");
        FineTuning.Save(model, path, new JobSpecification { Model = "resnet" });

        byte[] bytes = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, headerLength % 8);
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength));
        Assert.Equal("pt", header.RootElement.GetProperty("__metadata__").GetProperty("format").GetString());
        var state = model.state_dict();
        long end = 0;
        foreach (var (name, tensor) in state)
        {
            var entry = header.RootElement.GetProperty(name);
            Assert.Equal(tensor.dtype == ScalarType.Int64 ? "I64" : "F32", entry.GetProperty("dtype").GetString());
            Assert.Equal(tensor.shape, entry.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()));
            var offsets = entry.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt64()).ToArray();
            Assert.Equal(end, offsets[0]);
            end = offsets[1];
            if (tensor.dtype == ScalarType.Float32)
            {
                var stored = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan(8 + (int)headerLength + (int)offsets[0], (int)(offsets[1] - offsets[0])));
                Assert.Equal(Values(tensor), stored.ToArray());
            }
        }
        Assert.Equal(bytes.Length, 8 + headerLength + end);
        Assert.Contains(state.Keys, k => k.EndsWith("running_mean", StringComparison.Ordinal));
    }

    [Fact]
    public void Loading_restores_every_tensor_and_replace_head_keeps_the_fresh_head()
    {
        using var trained = ModelZoo.Create("cnn", seed: 1);
        string path = Path.Combine(_directory, "cnn.safetensors");
        FineTuning.Save(trained, path, new JobSpecification());

        using var restored = ModelZoo.Create("cnn", seed: 2);
        FineTuning.Apply(restored, new JobSpecification { InitFrom = path });
        foreach (var ((name, a), (_, b)) in trained.named_parameters().Zip(restored.named_parameters()))
            Assert.True(Values(a).SequenceEqual(Values(b)), name);

        // Another task with 5 classes: the body loads, the head keeps its seed-2 initialisation.
        using var fresh = ModelZoo.Create("cnn", seed: 2, ModelShape.Image(1, 28, 28, 5));
        var freshHead = Values(fresh.named_parameters().Single(p => p.name == "fc2.weight").parameter);
        using var retargeted = ModelZoo.Create("cnn", seed: 2, ModelShape.Image(1, 28, 28, 5));
        FineTuning.Apply(retargeted, new JobSpecification { InitFrom = path, ReplaceHead = true, Freeze = ["conv1", "conv2"] });
        var parameters = retargeted.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(freshHead, Values(parameters["fc2.weight"]));
        Assert.Equal(Values(trained.named_parameters().Single(p => p.name == "fc1.weight").parameter), Values(parameters["fc1.weight"]));
        Assert.False(parameters["conv1.weight"].requires_grad);
        Assert.False(parameters["conv2.bias"].requires_grad);
        Assert.True(parameters["fc1.weight"].requires_grad);
    }

    [Fact]
    public void A_checkpoint_of_another_shape_is_refused_naming_the_tensor()
    {
        using var trained = ModelZoo.Create("cnn", seed: 1);
        string path = Path.Combine(_directory, "cnn.safetensors");
        FineTuning.Save(trained, path, new JobSpecification());
        using var other = ModelZoo.Create("cnn", seed: 1, ModelShape.Image(1, 28, 28, 5));

        var error = Assert.Throws<InvalidDataException>(() => FineTuning.Apply(other, new JobSpecification { InitFrom = path }));
        Assert.Contains("fc2.weight is F32 [10, 128], the model's is Float32 [5, 128]", error.Message, StringComparison.Ordinal);
        Assert.Contains("--replace-head", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Freezing_a_prefix_that_names_nothing_lists_the_parameters()
    {
        using var trained = ModelZoo.Create("mlp", seed: 1);
        string path = Path.Combine(_directory, "mlp.safetensors");
        FineTuning.Save(trained, path, new JobSpecification { Model = "mlp" });
        using var model = ModelZoo.Create("mlp", seed: 1);

        var error = Assert.Throws<ArgumentException>(() => FineTuning.Apply(model, new JobSpecification { Model = "mlp", InitFrom = path, Freeze = ["conv1"] }));
        Assert.Contains("freeze: 'conv1' names no parameter; expected a prefix of fc1.weight, fc1.bias", error.Message, StringComparison.Ordinal);
    }
}
