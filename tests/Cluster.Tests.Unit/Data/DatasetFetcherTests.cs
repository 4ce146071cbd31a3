using System.Security.Cryptography;
using Cluster.Protos;
using Cluster.Worker.Data;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Cluster.Tests.Unit.Data;

[Trait("Tier", "unit")]
public sealed class DatasetFetcherTests : IDisposable
{
    private readonly string _cache = Directory.CreateTempSubdirectory("cluster-cache-").FullName;
    private readonly Dictionary<string, byte[]> _files = new()
    {
        ["train-images-idx3-ubyte.gz"] = RandomBytes(2_500_000, 1),
        ["empty"] = [],
        ["t10k-labels-idx1-ubyte.gz"] = RandomBytes(10_001, 2),
    };

    public void Dispose() => Directory.Delete(_cache, recursive: true);

    [Fact]
    public async Task A_whole_transfer_lands_in_the_cache_and_a_second_one_reuses_it()
    {
        string directory = await DatasetFetcher.StoreAsync(Stream(Messages()), "fashion-mnist", _cache, NullLogger.Instance, CancellationToken.None);
        foreach (var (name, bytes) in _files)
            Assert.Equal(bytes, await File.ReadAllBytesAsync(Path.Combine(directory, name)));
        Assert.Single(Directory.GetDirectories(Path.Combine(_cache, "datasets")));

        // Only the manifest is read the second time: no chunk is needed.
        var again = Stream(Messages().Take(1));
        Assert.Equal(directory, await DatasetFetcher.StoreAsync(again, "fashion-mnist", _cache, NullLogger.Instance, CancellationToken.None));
    }

    [Fact]
    public async Task A_corrupted_byte_is_caught_by_the_digest_and_nothing_is_cached()
    {
        var messages = Messages().ToList();
        var chunk = messages[2].Chunk;
        byte[] data = chunk.Data.ToByteArray();
        data[17] ^= 0x40;
        messages[2] = new FetchDatasetMessage { Chunk = new DatasetChunk { FileIndex = chunk.FileIndex, Offset = chunk.Offset, Data = ByteString.CopyFrom(data) } };
        var error = await Assert.ThrowsAsync<InvalidDataException>(() => DatasetFetcher.StoreAsync(Stream(messages), "fashion-mnist", _cache, NullLogger.Instance, CancellationToken.None));
        Assert.Contains("train-images-idx3-ubyte.gz: SHA-256 of the bytes received differs", error.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(_cache, "datasets")));
    }

    [Fact]
    public async Task A_truncated_transfer_or_chunks_out_of_order_are_refused_and_nothing_is_cached()
    {
        var messages = Messages().ToList();
        var truncated = await Assert.ThrowsAsync<InvalidDataException>(() =>
            DatasetFetcher.StoreAsync(Stream(messages.Take(messages.Count - 1)), "fashion-mnist", _cache, NullLogger.Instance, CancellationToken.None));
        Assert.Contains("the transfer ended in file t10k-labels-idx1-ubyte.gz at byte 0 of 10001", truncated.Message, StringComparison.Ordinal);

        (messages[1], messages[2]) = (messages[2], messages[1]);
        var reordered = await Assert.ThrowsAsync<InvalidDataException>(() =>
            DatasetFetcher.StoreAsync(Stream(messages), "fashion-mnist", _cache, NullLogger.Instance, CancellationToken.None));
        Assert.Contains("expected (file 0, offset 0)", reordered.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(_cache, "datasets")));
    }

    [Theory]
    [InlineData("../escape", "is not a plain file name")]
    [InlineData("a/b", "is not a plain file name")]
    [InlineData("..", "is not a plain file name")]
    [InlineData("", "is not a plain file name")]
    [InlineData("bell\u0007", "is not a plain file name")]
    public void Manifest_file_names_that_could_leave_the_cache_directory_are_refused(string name, string expected)
    {
        var manifest = Manifest();
        manifest.Files[0].Name = name;
        var error = Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(manifest, "fashion-mnist"));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Manifests_with_bad_counts_sizes_digests_or_another_dataset_are_refused()
    {
        var duplicate = Manifest();
        duplicate.Files[1].Name = duplicate.Files[0].Name;
        Assert.Contains("appears twice", Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(duplicate, "fashion-mnist")).Message, StringComparison.Ordinal);
        var negative = Manifest();
        negative.Files[0].SizeBytes = -1;
        Assert.Contains("size -1; expected 0 to", Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(negative, "fashion-mnist")).Message, StringComparison.Ordinal);
        var shortDigest = Manifest();
        shortDigest.Files[0].Sha256 = ByteString.CopyFrom(new byte[5]);
        Assert.Contains("5-byte digest", Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(shortDigest, "fashion-mnist")).Message, StringComparison.Ordinal);
        Assert.Contains("expected 1 to 64", Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(new DatasetManifest { Dataset = "mnist" }, "mnist")).Message, StringComparison.Ordinal);
        Assert.Contains("manifest dataset 'fashion-mnist'; expected 'mnist'", Assert.Throws<InvalidDataException>(() => DatasetFetcher.Validate(Manifest(), "mnist")).Message, StringComparison.Ordinal);
    }

    private DatasetManifest Manifest()
    {
        var manifest = new DatasetManifest { Dataset = "fashion-mnist" };
        foreach (var (name, bytes) in _files)
            manifest.Files.Add(new DatasetFile { Name = name, SizeBytes = bytes.Length, Sha256 = ByteString.CopyFrom(SHA256.HashData(bytes)) });
        return manifest;
    }

    /// <summary>What the coordinator sends: the manifest, then 1 MiB chunks of each file in order.</summary>
    private IEnumerable<FetchDatasetMessage> Messages()
    {
        yield return new FetchDatasetMessage { Manifest = Manifest() };
        int index = 0;
        foreach (var bytes in _files.Values)
        {
            for (int offset = 0; offset < bytes.Length; offset += 1 << 20)
            {
                int length = Math.Min(1 << 20, bytes.Length - offset);
                yield return new FetchDatasetMessage { Chunk = new DatasetChunk { FileIndex = index, Offset = offset, Data = ByteString.CopyFrom(bytes, offset, length) } };
            }
            index++;
        }
    }

    private static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static ListReader Stream(IEnumerable<FetchDatasetMessage> messages) => new([.. messages]);

    private sealed class ListReader(List<FetchDatasetMessage> messages) : IAsyncStreamReader<FetchDatasetMessage>
    {
        private int _next;
        public FetchDatasetMessage Current { get; private set; } = null!;

        public Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (_next >= messages.Count) return Task.FromResult(false);
            Current = messages[_next++];
            return Task.FromResult(true);
        }
    }
}
