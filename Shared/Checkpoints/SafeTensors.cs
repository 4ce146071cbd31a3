using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Cluster.Shared.Checkpoints;

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
public static class SafeTensors
{
    private const long HeaderBytesMax = 100L << 20;
    private const string ChecksumKey = "sha256";

    /// <summary>One tensor: safetensors dtype ("F32" or "I64"), shape and raw little-endian bytes.</summary>
    public sealed record Entry(string DType, long[] Shape, byte[] Data);

    /// <summary>One tensor to write; <paramref name="Data"/> holds its little-endian bytes.</summary>
    public readonly record struct Tensor(string Name, string DType, long[] Shape, ReadOnlyMemory<byte> Data);

    /// <summary>
    /// Writes <paramref name="tensors"/> atomically: a temporary file next to <paramref name="path"/>,
    /// flushed to the disk, then renamed over it, so a reader sees the old file or the whole new one.
    /// </summary>
    public static void Write(string path, IEnumerable<Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        var meta = new JsonObject((metadata ?? new Dictionary<string, string>()).Select(m => KeyValuePair.Create(m.Key, (JsonNode?)JsonValue.Create(m.Value))));
        header["__metadata__"] = meta;
        var blobs = new List<ReadOnlyMemory<byte>>();
        long offset = 0;
        using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var tensor in tensors)
            {
                if (tensor.DType is not ("F32" or "I64"))
                    throw new NotSupportedException($"tensor {tensor.Name}: dtype {tensor.DType}; checkpoints hold F32 and I64 tensors");
                header[tensor.Name] = new JsonObject
                {
                    ["dtype"] = tensor.DType,
                    ["shape"] = new JsonArray([.. tensor.Shape.Select(d => (JsonNode?)JsonValue.Create(d))]),
                    ["data_offsets"] = new JsonArray(offset, offset + tensor.Data.Length),
                };
                blobs.Add(tensor.Data);
                hash.AppendData(tensor.Data.Span);
                offset += tensor.Data.Length;
            }
            meta[ChecksumKey] = Convert.ToHexStringLower(hash.GetHashAndReset());
        }
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        AtomicFile.Write(path, file =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            file.Write(length);
            file.Write(json);
            for (int i = json.Length; i < padded; i++) file.WriteByte((byte)' ');
            foreach (var blob in blobs) file.Write(blob.Span);
        });
    }

    /// <summary>The metadata of the file (the <c>__metadata__</c> object), after the same checks as <see cref="Read"/>.</summary>
    public static Dictionary<string, string> ReadMetadata(string path) => ReadAll(path).Metadata;

    /// <summary>Every tensor of the file by name, after checking the header against the bytes present.</summary>
    public static Dictionary<string, Entry> Read(string path) => ReadAll(path).Entries;

    /// <summary>Tensors and metadata, after checking the header against the bytes present and the checksum.</summary>
    public static (Dictionary<string, Entry> Entries, Dictionary<string, string> Metadata) ReadAll(string path)
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
            entries[name] = ReadEntry(path, name, node, data);
        }
        return (entries, Metadata(path, header));
    }

    private static Entry ReadEntry(string path, string name, JsonNode? node, ReadOnlyMemory<byte> data)
    {
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
        return new Entry(dtype, shape, data[(int)begin..(int)end].ToArray());
    }

    private static Dictionary<string, string> Metadata(string path, JsonObject header)
    {
        var metadata = new Dictionary<string, string>();
        if (header["__metadata__"] is null) return metadata;
        if (header["__metadata__"] is not JsonObject meta) throw new InvalidDataException($"{path}: __metadata__ is not an object of strings");
        foreach (var (key, value) in meta)
        {
            if (value is not JsonValue v || !v.TryGetValue(out string? text))
                throw new InvalidDataException($"{path}: __metadata__.{key} is not a string");
            metadata[key] = text;
        }
        return metadata;
    }

    /// <summary>Refuses a file whose tensor bytes do not match the checksum its writer recorded.</summary>
    private static void CheckChecksum(string path, JsonObject header, ReadOnlySpan<byte> data)
    {
        if (header["__metadata__"] is not JsonObject meta || meta[ChecksumKey] is not JsonValue recorded || !recorded.TryGetValue(out string? expected))
            return; // Files from other tools carry no checksum; their header is still checked.
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
