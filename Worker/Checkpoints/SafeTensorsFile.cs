using System.Buffers.Binary;
using System.Security.Cryptography;
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
/// tensor bytes, offsets relative to the end of the header. F32 and I64 tensors only. The
/// metadata carries the SHA-256 of the tensor bytes (<c>sha256</c>), checked on reading, so a
/// corrupted file is refused instead of loaded; nothing in the header is trusted before it is
/// checked against the bytes present.
/// </summary>
public static class SafeTensorsFile
{
    private const long HeaderBytesMax = 100L << 20;

    public sealed record Entry(string DType, long[] Shape, byte[] Data);

    /// <summary>Writes <paramref name="tensors"/> atomically (temporary file, then rename).</summary>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        var meta = new JsonObject((metadata ?? new Dictionary<string, string>()).Select(m => KeyValuePair.Create(m.Key, (JsonNode?)JsonValue.Create(m.Value))));
        header["__metadata__"] = meta;
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
        using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var blob in blobs) hash.AppendData(blob);
            meta[ChecksumKey] = Convert.ToHexStringLower(hash.GetHashAndReset());
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
        if (!System.Text.Unicode.Utf8.IsValid(bytes.AsSpan(8, (int)headerLength)))
            throw new InvalidDataException($"{path}: header is not valid UTF-8");
        JsonObject header;
        try { header = JsonNode.Parse(bytes.AsSpan(8, (int)headerLength))?.AsObject() ?? throw new InvalidDataException($"{path}: empty header"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException)
        {
            // Not JSON, not an object, or a name given twice.
            throw new InvalidDataException($"{path}: header is not a JSON object of tensors ({e.Message})", e);
        }

        CheckChecksum(path, header, data.Span);
        var entries = new Dictionary<string, Entry>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            if (node is not JsonObject info) throw new InvalidDataException($"{path}: tensor {name} is not described by an object");
            string dtype = info["dtype"] is JsonValue d && d.TryGetValue(out string? text) ? text : "";
            long elementBytes = dtype switch { "F32" => 4, "I64" => 8, _ => throw new InvalidDataException($"{path}: tensor {name} has dtype '{dtype}'; expected F32 or I64") };
            long[] shape = Numbers(path, name, "shape", info["shape"], count: null);
            long[] offsets = Numbers(path, name, "data_offsets", info["data_offsets"], count: 2);
            long elements = 1;
            foreach (long dimension in shape)
            {
                if (dimension < 0 || (dimension > 0 && elements > data.Length / dimension))
                    throw new InvalidDataException($"{path}: tensor {name} shape [{string.Join(", ", shape)}] is larger than the file");
                elements *= dimension;
            }
            var (begin, end) = (offsets[0], offsets[1]);
            if (begin < 0 || begin > end || end > data.Length || end - begin != elements * elementBytes)
                throw new InvalidDataException($"{path}: tensor {name} data_offsets [{begin}, {end}] do not hold shape [{string.Join(", ", shape)}] of {dtype} within {data.Length} data bytes");
            entries[name] = new Entry(dtype, shape, data[(int)begin..(int)end].ToArray());
        }
        return entries;
    }

    private const string ChecksumKey = "sha256";

    /// <summary>Refuses a file whose tensor bytes do not match the checksum its writer recorded.</summary>
    private static void CheckChecksum(string path, JsonObject header, ReadOnlySpan<byte> data)
    {
        if (header["__metadata__"] is not JsonObject meta || meta[ChecksumKey] is not JsonValue recorded || !recorded.TryGetValue(out string? expected))
            return; // Files from other tools carry no checksum; their header is still checked below.
        string actual = Convert.ToHexStringLower(SHA256.HashData(data));
        if (!string.Equals(actual, expected, StringComparison.Ordinal))
            throw new InvalidDataException($"{path}: checksum mismatch (sha256 {actual}, the header records {expected}); the file is corrupted");
    }

    /// <summary>A JSON array of integers, or an error naming the tensor and the field.</summary>
    private static long[] Numbers(string path, string tensor, string field, JsonNode? node, int? count)
    {
        if (node is not JsonArray array || (count is { } n && array.Count != n) || array.Count > 64)
            throw new InvalidDataException($"{path}: tensor {tensor} {field} is not an array of {(count is { } c ? c.ToString() : "at most 64")} integers");
        var numbers = new long[array.Count];
        for (int i = 0; i < array.Count; i++)
        {
            if (array[i] is not JsonValue value || !value.TryGetValue(out long number))
                throw new InvalidDataException($"{path}: tensor {tensor} {field}[{i}] is not an integer");
            numbers[i] = number;
        }
        return numbers;
    }
}
