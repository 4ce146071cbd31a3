using Cluster.ParameterServer.Checkpoints;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Checkpoints;
using Cluster.Shared.Optimizers;
using Microsoft.Extensions.Logging;

namespace Cluster.Tests.Unit.Checkpoints;

/// <summary>
/// A parameter server's checkpoints: written atomically on their schedule, read back to the same
/// weights, optimizer state and version (training continues bit for bit), the weights readable as
/// plain safetensors, and a corrupt newest checkpoint reported and skipped for the one before it.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ParameterServerCheckpointTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);
    private readonly string _root = Directory.CreateTempSubdirectory("ps-checkpoints-").FullName;
    private readonly ListLogger _log = new();

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private static TensorLayout Layout() => new()
    {
        Tensors =
        {
            new TensorSpec { Name = "fc.weight", Dtype = DType.Float32, Shape = { 3, 4 } },
            new TensorSpec { Name = "fc.bias", Dtype = DType.Float32, Shape = { 3 } },
        },
    };

    private static readonly OptimizerSettings Adam = new() { Kind = "adam", LearningRate = 0.01, WeightDecay = 0.001 };

    /// <summary>Elements [2, 15) of the 15-element model: fc.weight is cut by the range, fc.bias lies whole in it.</summary>
    private static JobParameters NewJob() =>
        new("job-ckpt", 2, Layout(), Adam, [.. Enumerable.Range(0, 13).Select(i => i * 0.1f)], rangeStart: 2, partitionElements: 4);

    private static async Task TrainAsync(JobParameters job, int steps)
    {
        for (int i = 0; i < steps; i++)
        {
            long step = job.Version;
            for (int rank = 0; rank < job.WorldSize; rank++)
            {
                var gradient = Enumerable.Range(0, job.ElementCount).Select(e => MathF.Sin(step * 7 + rank * 3 + e)).ToArray();
                gradient.CopyTo(job.BeginPush(rank, step, 1 + rank).Span);
                job.Received(rank, job.ElementCount);
                job.CompletePush(rank);
            }
            await job.WaitForVersionAsync(step + 1, CancellationToken.None).WaitAsync(Patience);
        }
    }

    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];

    [Fact]
    public async Task A_restored_job_has_the_same_version_weights_and_moments_and_trains_on_bit_for_bit()
    {
        var job = NewJob();
        await TrainAsync(job, 5);
        string statePath = CheckpointFile.Write(_root, job.Snapshot());

        var restored = JobParameters.Restore(CheckpointFile.Read(statePath));

        Assert.Equal(5, restored.Version);
        Assert.Equal((2, 2L, 4), (restored.WorldSize, restored.RangeStart, restored.PartitionElements));
        Assert.Equal(Bits(job.WeightsAsFloats), Bits(restored.WeightsAsFloats));
        var (original, copy) = (job.Snapshot().OptimizerState, restored.Snapshot().OptimizerState);
        Assert.Equal(["exp_avg", "exp_avg_sq"], copy.Select(s => s.Name));
        for (int i = 0; i < original.Count; i++) Assert.Equal(Bits(original[i].Values), Bits(copy[i].Values));

        await TrainAsync(job, 3);
        await TrainAsync(restored, 3);
        Assert.Equal(Bits(job.WeightsAsFloats), Bits(restored.WeightsAsFloats));
        Assert.Equal(8, restored.Version);
    }

    [Fact]
    public async Task A_restored_job_keeps_its_barriers_members_and_the_ranks_behind_its_last_steps()
    {
        var job = NewJob();
        await TrainAsync(job, 3);
        Assert.True(job.JoinRank(2, fromStep: 5).Joined);
        Assert.Equal(3, job.RemoveRank(1));
        string statePath = CheckpointFile.Write(_root, job.Snapshot());

        var restored = JobParameters.Restore(CheckpointFile.Read(statePath));

        foreach (long step in new long[] { 3, 4, 5, 9 }) Assert.Equal(job.Members(step), restored.Members(step));
        Assert.Equal([0], restored.Members(3));
        Assert.Equal([0, 2], restored.Members(5));
        Assert.Equal(job.AppliedSteps(2).Select(a => (a.Step, string.Join(",", a.Ranks))), restored.AppliedSteps(2).Select(a => (a.Step, string.Join(",", a.Ranks))));
        Assert.Equal(3, restored.AppliedSteps(2).Count);
    }

    [Fact]
    public async Task The_weights_file_is_plain_safetensors_with_each_parameters_part_by_name()
    {
        var job = NewJob();
        await TrainAsync(job, 2);
        string statePath = CheckpointFile.Write(_root, job.Snapshot());

        var (entries, metadata) = SafeTensors.ReadAll(Path.ChangeExtension(statePath, ".safetensors"));

        Assert.Equal(["fc.weight[2:12]", "fc.bias"], entries.Keys.Order(StringComparer.Ordinal).Reverse());
        Assert.Equal([3L], entries["fc.bias"].Shape);
        Assert.Equal([10L], entries["fc.weight[2:12]"].Shape);
        Assert.Equal(Bits(job.WeightsAsFloats[10..]), Bits(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(entries["fc.bias"].Data)));
        Assert.Equal("job-ckpt", metadata["job_id"]);
        Assert.Equal("2", metadata["version"]);
    }

    [Fact]
    public async Task Checkpoints_follow_the_step_schedule_and_only_the_newest_ones_are_kept()
    {
        var checkpoints = new JobCheckpoints(new CheckpointOptions { Directory = _root, EverySteps = 3, Keep = 2 }, _log);
        var store = new ParameterStore(checkpoints);
        var (job, _) = store.GetOrCreate(Header(), [.. Enumerable.Range(0, 13).Select(i => i * 0.1f)]);

        await TrainAsync(job, 10);

        string directory = checkpoints.DirectoryOf("job-ckpt", 2);
        Assert.Equal(["v000000000006.state", "v000000000009.state"], Directory.GetFiles(directory, "*.state").Select(Path.GetFileName).Order());
        Assert.Equal(3, checkpoints.Written);
        Assert.Equal(9, checkpoints.LoadNewest(directory)!.Version);

        // A finished job's checkpoints go with it.
        Assert.True(store.Remove("job-ckpt"));
        Assert.False(Directory.Exists(directory));
    }

    public static TheoryData<string> Corruptions =>
        ["flipped weight byte", "truncated state", "truncated weights", "bad magic", "weights of another version", "state missing its weights", "an older checkpoint renamed"];

    [Theory]
    [MemberData(nameof(Corruptions))]
    public async Task A_corrupt_newest_checkpoint_is_reported_and_the_one_before_it_is_loaded(string corruption)
    {
        var checkpoints = new JobCheckpoints(new CheckpointOptions { Directory = _root, EverySteps = 2, Keep = 5 }, _log);
        var store = new ParameterStore(checkpoints);
        var (job, _) = store.GetOrCreate(Header(), [.. Enumerable.Range(0, 13).Select(i => i * 0.1f)]);
        await TrainAsync(job, 5); // the checkpoint of version 4 is written before step 4 is applied
        var atTwo = Bits(JobParameters.Restore(CheckpointFile.Read(Path.Combine(checkpoints.DirectoryOf("job-ckpt", 2), "v000000000002.state"))).WeightsAsFloats);
        string newest = Path.Combine(checkpoints.DirectoryOf("job-ckpt", 2), "v000000000004");
        Corrupt(corruption, newest);

        var loaded = new JobCheckpoints(new CheckpointOptions { Directory = _root }, _log).LoadNewest();

        var snapshot = Assert.Single(loaded);
        Assert.Equal(2, snapshot.Version);
        Assert.Equal(atTwo, Bits(snapshot.Weights));
        Assert.Contains(_log.Messages, m => m.StartsWith("Skipped corrupt checkpoint " + newest + ".state", StringComparison.Ordinal));
    }

    private static void Corrupt(string corruption, string basePath)
    {
        string state = basePath + ".state", weights = basePath + ".safetensors";
        switch (corruption)
        {
            case "flipped weight byte":
                var bytes = File.ReadAllBytes(weights);
                bytes[^3] ^= 0x40;
                File.WriteAllBytes(weights, bytes);
                break;
            case "truncated state":
                File.WriteAllBytes(state, File.ReadAllBytes(state)[..^20]);
                break;
            case "truncated weights":
                File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..^8]);
                break;
            case "bad magic":
                var header = File.ReadAllBytes(state);
                header[0] = (byte)'X';
                File.WriteAllBytes(state, header);
                break;
            case "weights of another version":
                File.Copy(basePath.Replace("v000000000004", "v000000000002", StringComparison.Ordinal) + ".safetensors", weights, overwrite: true);
                break;
            case "state missing its weights":
                File.Delete(weights);
                break;
            case "an older checkpoint renamed":
                string older = basePath.Replace("v000000000004", "v000000000002", StringComparison.Ordinal);
                File.Copy(older + ".state", state, overwrite: true);
                File.Copy(older + ".safetensors", weights, overwrite: true);
                break;
        }
    }

    [Fact]
    public void A_state_file_of_random_bytes_or_a_manifest_out_of_range_is_refused_naming_the_file()
    {
        string path = Path.Combine(_root, "v000000000001.state");
        var random = new Random(5);
        for (int i = 0; i < 200; i++)
        {
            var bytes = new byte[random.Next(0, 300)];
            random.NextBytes(bytes);
            if (i % 2 == 0 && bytes.Length >= 8) "CLPSCKP1"u8.CopyTo(bytes);
            File.WriteAllBytes(path, bytes);
            var error = Assert.Throws<InvalidDataException>(() => CheckpointFile.Read(path));
            Assert.StartsWith(path, error.Message, StringComparison.Ordinal);
        }
    }

    private static InitializeHeader Header() => new()
    {
        JobId = "job-ckpt", WorldSize = 2, Layout = Layout(), Optimizer = Adam.ToProto(), RangeStart = 2, RangeElements = 13, PartitionElements = 4,
    };

    /// <summary>Keeps every formatted log message.</summary>
    private sealed class ListLogger : ILogger
    {
        public List<string> Messages { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Messages) Messages.Add(formatter(state, exception));
        }
    }
}
