using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Optimizers;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Optimizers;

/// <summary>
/// The step a parameter server takes for a rank that pushed bfloat16 alone: the optimizer reads
/// the bfloat16 gradient as it came and writes the pull's bfloat16 copy of the new weights in the
/// same pass. It must give, bit for bit, the weights, the optimizer state and the copy that
/// decoding the gradient, stepping with float32 and encoding the weights give, for every
/// optimizer (Adam's fused loop, the others' block-by-block default, parameter groups).
/// </summary>
[Trait("Tier", "unit")]
public sealed class BFloat16StepTests
{
    private const int ElementCount = 1100;

    public static TheoryData<string> Optimizers() => ["adam", "adam-l2", "adamw", "sgd", "sgd-nesterov", "groups"];

    private static IOptimizer Create(string name) => name switch
    {
        "adam" => new OptimizerSettings { Kind = "adam", LearningRate = 1e-3 }.Create(ElementCount),
        "adam-l2" => new OptimizerSettings { Kind = "adam", LearningRate = 3e-3, Beta1 = 0.8, Beta2 = 0.99, Epsilon = 1e-6, WeightDecay = 0.01 }.Create(ElementCount),
        "adamw" => new OptimizerSettings { Kind = "adamw", LearningRate = 1e-3, WeightDecay = 0.01 }.Create(ElementCount),
        "sgd" => new OptimizerSettings { Kind = "sgd", LearningRate = 0.05 }.Create(ElementCount),
        "sgd-nesterov" => new OptimizerSettings { Kind = "sgd", LearningRate = 0.01, Momentum = 0.9, Nesterov = true, WeightDecay = 5e-4 }.Create(ElementCount),
        _ => OptimizerGroups.Create(new OptimizerSettings { Kind = "adam", LearningRate = 1e-3 },
            [new OptimizerGroup("head", 400, 333, new OptimizerSettings { Kind = "sgd", LearningRate = 0.1, Momentum = 0.5 })], 0, ElementCount),
    };

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];

    [Theory]
    [MemberData(nameof(Optimizers))]
    public void A_bfloat16_gradient_steps_to_the_bits_of_its_decoded_floats_and_the_copy_is_the_weights_encoded(string optimizer)
    {
        var random = new Random(17);
        float[] initial = [.. Enumerable.Range(0, ElementCount).Select(_ => (float)random.NextDouble())];
        var (reference, fused, fusedWithoutCopy) = (Create(optimizer), Create(optimizer), Create(optimizer));
        var (expected, actual, actualWithoutCopy) = ((float[])initial.Clone(), (float[])initial.Clone(), (float[])initial.Clone());
        // A range off the vector's start, crossing the group's edges, not a multiple of the SIMD width.
        const int offset = 37, length = 1003;
        var copy = new ushort[length];
        for (long step = 1; step <= 3; step++)
        {
            var gradient = new ushort[length];
            float[] values = [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() - 0.5) * 1e-2f)];
            ElementCodec.Encode(values, MemoryMarshal.AsBytes(gradient.AsSpan()), DType.Bfloat16);

            var decoded = new float[length];
            ElementCodec.Decode(MemoryMarshal.AsBytes(gradient.AsSpan()), decoded, DType.Bfloat16);
            reference.StepRange(offset, expected.AsSpan(offset, length), decoded, step);
            fused.StepRange(offset, actual.AsSpan(offset, length), gradient, copy, step);
            fusedWithoutCopy.StepRange(offset, actualWithoutCopy.AsSpan(offset, length), gradient, [], step);

            var encoded = new ushort[length];
            ElementCodec.Encode(expected.AsSpan(offset, length), MemoryMarshal.AsBytes(encoded.AsSpan()), DType.Bfloat16);
            Assert.Equal(encoded, copy);
        }
        Assert.Equal(Bits(expected), Bits(actual));
        Assert.Equal(Bits(expected), Bits(actualWithoutCopy));
        Assert.NotEqual(Bits(initial), Bits(actual));
        for (int b = 0; b < reference.StateBuffers.Count; b++)
        {
            Assert.Equal(Bits(reference.StateBuffers[b].Values), Bits(fused.StateBuffers[b].Values));
            Assert.Equal(Bits(reference.StateBuffers[b].Values), Bits(fusedWithoutCopy.StateBuffers[b].Values));
        }
    }

    [Theory]
    [MemberData(nameof(Optimizers))]
    public void A_copy_of_another_length_is_refused(string optimizer)
    {
        var error = Assert.Throws<ArgumentException>(() => Create(optimizer).StepRange(0, new float[16], new ushort[16], new ushort[15], 1));
        Assert.Contains("copy of 15 elements for 16 parameters", error.Message);
    }
}
