using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Models;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// The checkpoint (safetensors) reader on mutated files and on headers with fields of every
/// wrong kind: it returns tensors that match their header exactly, or throws
/// InvalidDataException naming the file; nothing else. A corrupted checkpoint never reaches a model.
/// </summary>
[Trait("Tier", "unit")]
public sealed class CheckpointReaderFuzzTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("checkpoint-fuzz-").FullName;

    private byte[] ValidCheckpoint()
    {
        string path = Path.Combine(_directory, "valid.safetensors");
        using var model = ModelZoo.Create("mlp", seed: 3, height: 4, width: 4);
        SafeTensorsFile.Write(path, model.state_dict().Select(p => (p.Key, p.Value)), new Dictionary<string, string> { ["model"] = "mlp" });
        return File.ReadAllBytes(path);
    }

    [Fact]
    public void Mutated_files_give_consistent_tensors_or_a_clear_error()
    {
        byte[] valid = ValidCheckpoint();
        string path = Path.Combine(_directory, "mutated.safetensors");
        Fuzz.Run(seed: 31, cases: 3000, (random, i) =>
        {
            File.WriteAllBytes(path, i % 10 == 9 ? Fuzz.RandomBytes(random, 256) : Fuzz.Mutate(random, valid));
            Check(path);
        });
    }

    [Fact]
    public void Header_fields_of_every_wrong_kind_give_a_clear_error()
    {
        byte[] valid = ValidCheckpoint();
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        var header = JsonNode.Parse(valid.AsSpan(8, headerLength))!.AsObject();
        byte[] data = valid[(8 + headerLength)..];
        string[] tensors = [.. header.Where(p => p.Key != "__metadata__").Select(p => p.Key)];
        string path = Path.Combine(_directory, "edited.safetensors");
        Fuzz.Run(seed: 32, cases: 2000, (random, i) =>
        {
            var edited = header.DeepClone().AsObject();
            var tensor = edited[tensors[random.Next(tensors.Length)]]!.AsObject();
            string field = new[] { "dtype", "shape", "data_offsets" }[random.Next(3)];
            tensor[field] = OddValue(random);
            File.WriteAllBytes(path, Assemble(edited, data));
            Check(path);
        });
    }

    [Fact]
    public void A_checkpoint_with_one_flipped_data_byte_is_refused_and_the_model_keeps_its_weights()
    {
        byte[] bytes = ValidCheckpoint();
        bytes[^5] ^= 0x10;
        string path = Path.Combine(_directory, "corrupted.safetensors");
        File.WriteAllBytes(path, bytes);
        using var model = ModelZoo.Create("mlp", seed: 9, height: 4, width: 4);
        float[][] before = [.. model.parameters().Select(p => p.data<float>().ToArray())];

        var error = Assert.Throws<InvalidDataException>(() => FineTuning.Load(model, path, skipPrefix: null));

        Assert.StartsWith($"{path}: checksum mismatch", error.Message, StringComparison.Ordinal);
        Assert.Contains("the file is corrupted", error.Message, StringComparison.Ordinal);
        Assert.Equal(before, model.parameters().Select(p => p.data<float>().ToArray()));
    }

    [Fact]
    public void A_valid_checkpoint_round_trips_every_tensor()
    {
        string path = Path.Combine(_directory, "valid.safetensors");
        using var model = ModelZoo.Create("mlp", seed: 3, height: 4, width: 4);
        SafeTensorsFile.Write(path, model.state_dict().Select(p => (p.Key, p.Value)));
        using var copy = ModelZoo.Create("mlp", seed: 4, height: 4, width: 4);

        FineTuning.Load(copy, path, skipPrefix: null);

        Assert.Equal(model.parameters().Select(p => p.data<float>().ToArray()), copy.parameters().Select(p => p.data<float>().ToArray()));
    }

    /// <summary>Reads the file: either every tensor matches its header, or the error names the file.</summary>
    private static void Check(string path)
    {
        Dictionary<string, Cluster.Shared.Checkpoints.SafeTensors.Entry> entries;
        try { entries = SafeTensorsFile.Read(path); }
        catch (InvalidDataException e)
        {
            Assert.StartsWith(path + ":", e.Message, StringComparison.Ordinal);
            return;
        }
        foreach (var (name, entry) in entries)
        {
            long elements = entry.Shape.Aggregate(1L, (a, b) => a * b);
            Assert.True(entry.Shape.All(d => d >= 0), $"{name}: negative dimension accepted");
            Assert.Equal(elements * (entry.DType == "F32" ? 4 : 8), entry.Data.Length);
        }
    }

    private static JsonNode? OddValue(Random random) => random.Next(12) switch
    {
        0 => null,
        1 => JsonValue.Create("F32"),
        2 => JsonValue.Create("F16"),
        3 => JsonValue.Create(random.Next(-5, 5)),
        4 => JsonValue.Create(1.5),
        5 => JsonValue.Create(long.MaxValue),
        6 => new JsonArray(),
        7 => new JsonArray(-1, 8),
        8 => new JsonArray(random.Next(0, 100), random.Next(0, 100)),
        9 => new JsonArray(new JsonArray(1), 2),
        10 => new JsonArray(long.MaxValue, 2, 2),
        _ => new JsonObject { ["x"] = 1 },
    };

    private static byte[] Assemble(JsonObject header, byte[] data)
    {
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var bytes = new byte[8 + json.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)json.Length);
        json.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + json.Length);
        return bytes;
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}
