using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Checkpoints;
using Cluster.Shared.Optimizers;
using MessagePack;
using MessagePack.Resolvers;

namespace Cluster.ParameterServer.Checkpoints;

/// <summary>
/// One checkpoint of one job's key range, as two files written atomically (temporary file, fsync,
/// rename) in this order: <c>vVERSION.safetensors</c>, the weights (each parameter of the model
/// that lies in the range, by name; a parameter cut by the range's ends is stored as the 1-D run
/// it contributes, named <c>NAME[begin:end]</c>), then <c>vVERSION.state</c>, which commits the
/// checkpoint: the magic <c>CLPSCKP1</c>, the SHA-256 of the rest, then a MessagePack
/// <see cref="CheckpointManifest"/> that records the SHA-256 of the safetensors file. A reader
/// trusts nothing before both checksums and every size agree.
/// </summary>
public static class CheckpointFile
{
    public const int Format = 1;
    public const string StateExtension = ".state";
    public const string ParametersExtension = ".safetensors";
    private static readonly byte[] Magic = "CLPSCKP1"u8.ToArray();
    private const int HashBytes = 32;
    /// <summary>Bound on the ranks an applied-step record may name (a job's ranks, joiners included).</summary>
    private const int RanksMax = 1 << 16;
    private const long StateBytesMax = 3L * int.MaxValue;

    /// <summary>Untrusted input: MessagePack's hardened mode, and only the standard resolver for the explicit contracts.</summary>
    private static readonly MessagePackSerializerOptions Options =
        MessagePackSerializerOptions.Standard.WithResolver(StandardResolver.Instance).WithSecurity(MessagePackSecurity.UntrustedData);

    /// <summary>Name of the files of <paramref name="version"/>, without extension.</summary>
    public static string BaseName(long version) => $"v{version:D12}";

    /// <summary>Writes the snapshot's two files into <paramref name="directory"/>; returns the path of the state file.</summary>
    public static string Write(string directory, JobSnapshot snapshot)
    {
        Directory.CreateDirectory(directory);
        string basePath = Path.Combine(directory, BaseName(snapshot.Version));
        string parametersPath = basePath + ParametersExtension;
        SafeTensors.Write(parametersPath, ParameterTensors(snapshot), new Dictionary<string, string>
        {
            ["job_id"] = snapshot.JobId, ["version"] = snapshot.Version.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["range_start"] = snapshot.RangeStart.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        var manifest = Manifest(snapshot, Convert.ToHexStringLower(HashFile(parametersPath)));
        byte[] payload = MessagePackSerializer.Serialize(manifest, Options);
        string statePath = basePath + StateExtension;
        AtomicFile.Write(statePath, file =>
        {
            file.Write(Magic);
            file.Write(SHA256.HashData(payload));
            file.Write(payload);
        });
        return statePath;
    }

    /// <summary>The job as the state file at <paramref name="statePath"/> and its weights describe it; InvalidDataException when anything is off.</summary>
    public static JobSnapshot Read(string statePath)
    {
        var manifest = ReadManifest(statePath);
        string parametersPath = Path.ChangeExtension(statePath, ParametersExtension);
        if (!File.Exists(parametersPath)) throw new InvalidDataException($"{parametersPath}: missing; the state file {statePath} names it");
        string actual = Convert.ToHexStringLower(HashFile(parametersPath));
        if (!string.Equals(actual, manifest.ParametersSha256, StringComparison.Ordinal))
            throw new InvalidDataException($"{parametersPath}: sha256 {actual}; the state file records {manifest.ParametersSha256} (the weights do not belong to it)");
        var layout = Layout(manifest);
        var weights = new float[manifest.ElementCount];
        var entries = SafeTensors.Read(parametersPath);
        foreach (var (name, offset, length) in Pieces(layout, manifest.RangeStart, manifest.ElementCount))
        {
            if (!entries.TryGetValue(name, out var entry) || entry.DType != "F32" || entry.Data.Length != length * sizeof(float))
                throw new InvalidDataException($"{parametersPath}: tensor {name}: missing or not {length} F32 elements");
            MemoryMarshal.Cast<byte, float>(entry.Data).CopyTo(weights.AsSpan(offset, length));
        }
        var state = manifest.OptimizerState.Select(s =>
        {
            if (s.Values.Length != (long)manifest.ElementCount * sizeof(float))
                throw new InvalidDataException($"{statePath}: optimizer state {s.Name}: {s.Values.Length} bytes; expected {(long)manifest.ElementCount * sizeof(float)}");
            return (s.Name, MemoryMarshal.Cast<byte, float>(s.Values).ToArray());
        }).ToList();
        var optimizer = Settings(manifest.Optimizer);
        var errors = optimizer.Validate().ToList();
        if (errors.Count > 0) throw new InvalidDataException($"{statePath}: optimizer: {string.Join("; ", errors)}");
        foreach (var applied in manifest.AppliedSteps)
            if (applied.Step < manifest.Version - JobParameters.AppliedStepsKept || applied.Step >= manifest.Version
                || applied.Ranks is null || applied.Ranks.Length > RanksMax || applied.Ranks.Any(rank => rank is < 0 or >= RanksMax))
                throw new InvalidDataException(
                    $"{statePath}: applied step {applied.Step}: expected a step from {manifest.Version - JobParameters.AppliedStepsKept} to {manifest.Version - 1} with ranks 0 to {RanksMax - 1}");
        if (manifest.AppliedSteps.Count > JobParameters.AppliedStepsKept)
            throw new InvalidDataException($"{statePath}: applied steps: {manifest.AppliedSteps.Count}; expected at most {JobParameters.AppliedStepsKept}");
        foreach (var (what, records) in new[] { ("joined", manifest.JoinSteps), ("removed", manifest.LeaveSteps) })
        {
            if (records.Count > RanksMax || records.Select(r => r.Rank).Distinct().Count() != records.Count
                || records.Any(r => r.Rank is < 0 or >= RanksMax || r.Step < 0 || (what == "removed" && r.Step > manifest.Version + 1)))
                throw new InvalidDataException($"{statePath}: {what} ranks: expected distinct ranks 0 to {RanksMax - 1} with steps from 0" +
                    (what == "removed" ? $" to {manifest.Version + 1}" : ""));
        }
        return new JobSnapshot(manifest.JobId, manifest.Version, manifest.WorldSize, layout, manifest.RangeStart, manifest.PartitionElements,
            optimizer, weights, state, manifest.RejectedGradients)
        {
            AppliedSteps = [.. manifest.AppliedSteps.Select(a => (a.Step, a.Ranks))],
            JoinSteps = manifest.JoinSteps.ToDictionary(r => r.Rank, r => r.Step),
            LeaveSteps = manifest.LeaveSteps.ToDictionary(r => r.Rank, r => r.Step),
        };
    }

    /// <summary>The manifest, after checking the magic, the checksum and every field's range.</summary>
    public static CheckpointManifest ReadManifest(string statePath)
    {
        byte[] bytes;
        try
        {
            var length = new FileInfo(statePath).Length;
            if (length > StateBytesMax) throw new InvalidDataException($"{statePath}: {length} bytes; expected at most {StateBytesMax}");
            bytes = File.ReadAllBytes(statePath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"{statePath}: cannot be read ({e.Message})", e);
        }
        if (bytes.Length < Magic.Length + HashBytes || !bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new InvalidDataException($"{statePath}: {bytes.Length} bytes without the header CLPSCKP1 and a checksum; not a checkpoint state file, or truncated");
        var payload = bytes.AsMemory(Magic.Length + HashBytes);
        if (!SHA256.HashData(payload.Span).AsSpan().SequenceEqual(bytes.AsSpan(Magic.Length, HashBytes)))
            throw new InvalidDataException($"{statePath}: checksum mismatch; the file is truncated or corrupted");
        CheckpointManifest manifest;
        try { manifest = MessagePackSerializer.Deserialize<CheckpointManifest>(payload, Options); }
        catch (MessagePackSerializationException e) { throw new InvalidDataException($"{statePath}: not a checkpoint manifest ({e.Message})", e); }
        foreach (string error in Validate(manifest)) throw new InvalidDataException($"{statePath}: {error}");
        return manifest;
    }

    private static IEnumerable<string> Validate(CheckpointManifest m)
    {
        if (m.Format != Format) yield return $"format: {m.Format}; expected {Format}";
        if (m.JobId.Length is 0 or > 1024) yield return $"job_id: '{m.JobId}'; expected 1 to 1024 characters";
        if (m.Version < 0) yield return $"version: {m.Version}; expected 0 or more";
        if (m.WorldSize is < 1 or > Shared.Jobs.JobSpecification.WorkersMax) yield return $"world_size: {m.WorldSize}; expected 1 to {Shared.Jobs.JobSpecification.WorkersMax}";
        if (m.ElementCount < 1 || m.ElementCount > ParameterStore.ElementsMax) yield return $"element_count: {m.ElementCount}; expected 1 to {ParameterStore.ElementsMax}";
        if (m.PartitionElements < 1) yield return $"partition_elements: {m.PartitionElements}; expected 1 or more";
        if (m.Layout is null || m.Layout.Count == 0 || m.Layout.Any(t => t?.Name is null || t.Shape is null)) yield return "layout: empty or incomplete; expected the model's parameters";
        if (m.Optimizer is null || m.OptimizerState is null || m.OptimizerState.Any(s => s?.Name is null || s.Values is null)) yield return "optimizer: missing or incomplete";
        if (m.ParametersSha256 is null || m.ParametersSha256.Length != 64) yield return "parameters_sha256: not a SHA-256 in hex";
    }

    private static CheckpointManifest Manifest(JobSnapshot s, string parametersSha256) => new()
    {
        Format = Format, JobId = s.JobId, Version = s.Version, WorldSize = s.WorldSize, RangeStart = s.RangeStart,
        ElementCount = s.Weights.Length, PartitionElements = s.PartitionElements,
        Optimizer = new OptimizerRecord
        {
            Kind = s.Optimizer.Kind, LearningRate = s.Optimizer.LearningRate, Beta1 = s.Optimizer.Beta1, Beta2 = s.Optimizer.Beta2,
            Epsilon = s.Optimizer.Epsilon, WeightDecay = s.Optimizer.WeightDecay, Momentum = s.Optimizer.Momentum,
            Dampening = s.Optimizer.Dampening, Nesterov = s.Optimizer.Nesterov,
        },
        Layout = [.. s.Layout.Tensors.Select(t => new TensorRecord { Name = t.Name, Shape = [.. t.Shape] })],
        OptimizerState = [.. s.OptimizerState.Select(b => new StateRecord { Name = b.Name, Values = MemoryMarshal.AsBytes(b.Values.AsSpan()).ToArray() })],
        ParametersSha256 = parametersSha256, RejectedGradients = s.RejectedGradients,
        AppliedSteps = [.. s.AppliedSteps.Select(a => new AppliedStepRecord { Step = a.Step, Ranks = a.Ranks })],
        JoinSteps = [.. s.JoinSteps.OrderBy(j => j.Key).Select(j => new RankStepRecord { Rank = j.Key, Step = j.Value })],
        LeaveSteps = [.. s.LeaveSteps.OrderBy(l => l.Key).Select(l => new RankStepRecord { Rank = l.Key, Step = l.Value })],
        WrittenAtUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
    };

    private static OptimizerSettings Settings(OptimizerRecord o) => new()
    {
        Kind = o.Kind, LearningRate = o.LearningRate, Beta1 = o.Beta1, Beta2 = o.Beta2, Epsilon = o.Epsilon,
        WeightDecay = o.WeightDecay, Momentum = o.Momentum, Dampening = o.Dampening, Nesterov = o.Nesterov,
    };

    private static TensorLayout Layout(CheckpointManifest manifest)
    {
        var layout = new TensorLayout();
        foreach (var tensor in manifest.Layout)
            layout.Tensors.Add(new TensorSpec { Name = tensor.Name, Dtype = DType.Float32, Shape = { tensor.Shape } });
        long total;
        try { total = ParameterStore.ElementCount(layout); }
        catch (ArgumentException e) { throw new InvalidDataException($"checkpoint of job {manifest.JobId}: {e.Message}", e); }
        if (manifest.RangeStart < 0 || manifest.RangeStart > total - manifest.ElementCount)
            throw new InvalidDataException($"checkpoint of job {manifest.JobId}: range [{manifest.RangeStart}, {manifest.RangeStart + manifest.ElementCount}) is not within the model's {total} elements");
        return layout;
    }

    /// <summary>The weights as safetensors tensors: each parameter's part of the range.</summary>
    private static IEnumerable<SafeTensors.Tensor> ParameterTensors(JobSnapshot snapshot)
    {
        var bytes = MemoryMarshal.AsBytes(snapshot.Weights.AsSpan()).ToArray().AsMemory();
        foreach (var (name, offset, length) in Pieces(snapshot.Layout, snapshot.RangeStart, snapshot.Weights.Length))
        {
            var spec = snapshot.Layout.Tensors.FirstOrDefault(t => t.Name == name);
            long[] shape = spec is not null ? [.. spec.Shape] : [length];
            yield return new SafeTensors.Tensor(name, "F32", shape, bytes.Slice(offset * sizeof(float), length * sizeof(float)));
        }
    }

    /// <summary>
    /// Each parameter's run within [rangeStart, rangeStart + count): its name (the parameter's
    /// own when it lies whole in the range, else <c>NAME[begin:end]</c>), offset in the range and length.
    /// </summary>
    private static IEnumerable<(string Name, int Offset, int Length)> Pieces(TensorLayout layout, long rangeStart, int count)
    {
        long position = 0, rangeEnd = rangeStart + count;
        foreach (var tensor in layout.Tensors)
        {
            long size = tensor.Shape.Aggregate(1L, (a, d) => a * d);
            long begin = Math.Max(position, rangeStart), end = Math.Min(position + size, rangeEnd);
            if (begin < end)
            {
                bool whole = begin == position && end == position + size;
                string name = whole ? tensor.Name : $"{tensor.Name}[{begin - position}:{end - position}]";
                yield return (name, (int)(begin - rangeStart), (int)(end - begin));
            }
            position += size;
        }
    }

    private static byte[] HashFile(string path)
    {
        using var file = File.OpenRead(path);
        return SHA256.HashData(file);
    }
}
