using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Checkpoints;

/// <summary>
/// The safetensors format (huggingface/safetensors), so checkpoints open in Python's
/// <c>safetensors.torch.load_file</c> and other standard tools: an 8-byte little-endian header
/// length N, N bytes of JSON <c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
/// "__metadata__": {...}}</c> (space-padded to a multiple of 8), then the raw little-endian
/// tensor bytes, offsets relative to the end of the header. F32 and I64 tensors only.
/// </summary>
public static class SafeTensorsFile
{
    private const long HeaderBytesMax = 100L << 20;

    public sealed record Entry(string DType, long[] Shape, byte[] Data);

    /// <summary>Writes <paramref name="tensors"/> atomically (temporary file, then rename).</summary>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
            header["__metadata__"] = new JsonObject(metadata.Select(m => KeyValuePair.Create(m.Key, (JsonNode?)JsonValue.Create(m.Value))));
        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var (name, tensor) in tensors)
        {
            using var cpu = tensor.detach().cpu().contiguous();
            string dtype = cpu.dtype switch
            {
                ScalarType.Float32 => "F32",
                ScalarType.Int64 => "I64",
                var other => throw new NotSupportedException($"tensor {name}: dtype {other}; checkpoints hold float32 and int64 tensors"),
            };
            byte[] data = cpu.bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray([.. cpu.shape.Select(d => (JsonNode?)JsonValue.Create(d))]),
                ["data_offsets"] = new JsonArray(offset, offset + data.Length),
            };
            blobs.Add(data);
            offset += data.Length;
        }
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        string temporary = path + ".tmp";
        using (var file = File.Create(temporary))
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            file.Write(length);
            file.Write(json);
            for (int i = json.Length; i < padded; i++) file.WriteByte((byte)' ');
            foreach (var blob in blobs) file.Write(blob);
        }
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Every tensor of the file by name, after checking the header against the bytes present.</summary>
    public static Dictionary<string, Entry> Read(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"{path}: cannot be read ({e.Message})", e);
        }
        if (bytes.Length < 8) throw new InvalidDataException($"{path}: {bytes.Length} bytes is too short for a safetensors file");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > HeaderBytesMax || (long)headerLength > bytes.Length - 8)
            throw new InvalidDataException($"{path}: header length {headerLength} does not fit the file's {bytes.Length} bytes");
        var data = bytes.AsMemory(8 + (int)headerLength);
        JsonObject header;
        try { header = JsonNode.Parse(bytes.AsSpan(8, (int)headerLength))?.AsObject() ?? throw new InvalidDataException($"{path}: empty header"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: header is not JSON ({e.Message})", e); }

        var entries = new Dictionary<string, Entry>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__" || node is not JsonObject info) continue;
            string dtype = (string?)info["dtype"] ?? "";
            long[] shape = [.. (info["shape"]?.AsArray() ?? []).Select(d => (long)d!)];
            var offsets = info["data_offsets"]?.AsArray() ?? [];
            long begin = offsets.Count == 2 ? (long)offsets[0]! : -1, end = offsets.Count == 2 ? (long)offsets[1]! : -1;
            long elementBytes = dtype switch { "F32" => 4, "I64" => 8, _ => throw new InvalidDataException($"{path}: tensor {name} has dtype {dtype}; expected F32 or I64") };
            if (begin < 0 || end > data.Length || end - begin != shape.Aggregate(1L, (a, b) => a * b) * elementBytes)
                throw new InvalidDataException($"{path}: tensor {name} data_offsets [{begin}, {end}] do not hold shape [{string.Join(", ", shape)}] of {dtype} within {data.Length} data bytes");
            entries[name] = new Entry(dtype, shape, data[(int)begin..(int)end].ToArray());
        }
        return entries;
    }
}
