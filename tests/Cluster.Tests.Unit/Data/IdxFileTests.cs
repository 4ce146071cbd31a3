using System.Buffers.Binary;
using System.IO.Compression;
using Cluster.Worker.Data;

namespace Cluster.Tests.Unit.Data;

/// <summary>
/// <see cref="IdxFile"/> and <see cref="DatasetCatalog"/>: hand-built IDX files in a temporary
/// directory (raw and gzip, valid and broken), and the Fashion-MNIST copy shipped in data/.
/// </summary>
[Trait("Tier", "unit")]
public sealed class IdxFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("idx-tests-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    /// <summary>An IDX file of unsigned bytes: magic 0x000008DD, big-endian sizes, then the data.</summary>
    private static byte[] Idx(int[] dimensions, byte[] data, int typeCode = 0x08)
    {
        var bytes = new byte[4 + 4 * dimensions.Length + data.Length];
        bytes[2] = (byte)typeCode;
        bytes[3] = (byte)dimensions.Length;
        for (int d = 0; d < dimensions.Length; d++)
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * d), dimensions[d]);
        data.CopyTo(bytes, 4 + 4 * dimensions.Length);
        return bytes;
    }

    private static byte[] Sequence(int count) => [.. Enumerable.Range(0, count).Select(i => (byte)(i * 7))];

    private static byte[] Gzip(byte[] raw)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Optimal)) gzip.Write(raw);
        return output.ToArray();
    }

    private string WriteFile(string name, byte[] bytes)
    {
        string path = Path.Combine(_directory, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_valid_three_dimensional_file_is_read_raw_or_gzipped(bool gzipped)
    {
        byte[] data = Sequence(2 * 3 * 4);
        byte[] raw = Idx([2, 3, 4], data);
        string path = WriteFile(gzipped ? "images.gz" : "images", gzipped ? Gzip(raw) : raw);

        var content = IdxFile.Read(path, expectedDimensions: 3);

        Assert.Equal([2, 3, 4], content.Dimensions);
        Assert.Equal(data, content.Data);
    }

    [Fact]
    public void A_wrong_magic_number_throws_naming_the_path_and_the_expected_magic()
    {
        // Type code 0x0D is float32, not unsigned bytes.
        string path = WriteFile("floats", Idx([1, 1, 1], new byte[4], typeCode: 0x0D));

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.StartsWith(path + ":", error.Message, StringComparison.Ordinal);
        Assert.Contains("magic number 0x00000D03", error.Message, StringComparison.Ordinal);
        Assert.Contains("expected 0x00000803", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_wrong_dimension_count_throws_naming_the_path_and_both_counts()
    {
        string path = WriteFile("labels", Idx([5], Sequence(5)));

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.Equal($"{path}: has 1 dimensions; expected 3", error.Message);
    }

    [Fact]
    public void Truncated_data_throws_naming_the_path_declared_and_present_sizes()
    {
        byte[] complete = Idx([2, 3, 4], Sequence(24));
        string path = WriteFile("truncated", complete[..^4]);

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.Equal($"{path}: header declares 24 data bytes (2 x 3 x 4) but the file holds 20", error.Message);
    }

    [Fact]
    public void A_header_declaring_more_data_than_present_throws_even_when_gzipped()
    {
        // Declares 1000 x 28 x 28 images but carries a single image.
        string path = WriteFile("short.gz", Gzip(Idx([1000, 28, 28], Sequence(28 * 28))));

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.Equal($"{path}: header declares 784000 data bytes (1000 x 28 x 28) but the file holds 784", error.Message);
    }

    [Fact]
    public void A_file_cut_inside_the_header_throws_naming_the_path()
    {
        byte[] complete = Idx([2, 3, 4], Sequence(24));
        string cutInSizes = WriteFile("cut-sizes", complete[..10]);
        string cutInMagic = WriteFile("cut-magic", complete[..2]);

        var sizes = Assert.Throws<InvalidDataException>(() => IdxFile.Read(cutInSizes, 3));
        var magic = Assert.Throws<InvalidDataException>(() => IdxFile.Read(cutInMagic, 3));

        Assert.Equal($"{cutInSizes}: 10 bytes is too short for a header of 3 dimensions", sizes.Message);
        Assert.Equal($"{cutInMagic}: 2 bytes is too short for an IDX header; expected at least 4", magic.Message);
    }

    [Fact]
    public void A_zero_dimension_size_throws_naming_the_dimension()
    {
        string path = WriteFile("empty", Idx([3, 0, 4], []));

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.Equal($"{path}: dimension 1 has size 0; expected 1 to {int.MaxValue}", error.Message);
    }

    [Fact]
    public void A_corrupt_gzip_stream_throws_naming_the_path()
    {
        byte[] compressed = Gzip(Idx([2, 3, 4], Sequence(24)));
        compressed[12] ^= 0xFF; // inside the deflate stream
        compressed[13] ^= 0xFF;
        string path = WriteFile("corrupt.gz", compressed);

        var error = Assert.Throws<InvalidDataException>(() => IdxFile.Read(path, 3));

        Assert.StartsWith(path + ":", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Locate_with_a_directory_missing_files_names_each_missing_file()
    {
        WriteFile("train-images-idx3-ubyte.gz", []);
        WriteFile("t10k-labels-idx1-ubyte", []);

        var error = Assert.Throws<FileNotFoundException>(() => DatasetCatalog.Locate("fashion-mnist", _directory));

        Assert.Equal(
            $"data: {_directory} lacks train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz]; expected the four IDX files of fashion-mnist",
            error.Message);
    }

    [Fact]
    public void Locate_with_all_four_files_raw_or_gzipped_returns_the_directory()
    {
        foreach (string name in new[] { "train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte" })
            WriteFile(name, []);

        Assert.Equal(_directory, DatasetCatalog.Locate("mnist", _directory));
    }

    [Fact]
    public void Load_reads_a_hand_built_dataset_and_rejects_mismatched_label_counts()
    {
        WriteFile("train-images-idx3-ubyte", Idx([3, 2, 2], Sequence(12)));
        WriteFile("train-labels-idx1-ubyte.gz", Gzip(Idx([3], [0, 9, 4])));
        WriteFile("t10k-images-idx3-ubyte", Idx([2, 2, 2], Sequence(8)));
        string testLabels = WriteFile("t10k-labels-idx1-ubyte", Idx([1], [5]));

        var error = Assert.Throws<InvalidDataException>(() => DatasetCatalog.Load("mnist", _directory));
        Assert.StartsWith($"{testLabels}: 1 labels for 2 images", error.Message, StringComparison.Ordinal);

        WriteFile("t10k-labels-idx1-ubyte", Idx([2], [5, 1]));
        var (train, test) = DatasetCatalog.Load("mnist", _directory);
        Assert.Equal((3, 2, 2, 10), (train.Count, train.Height, train.Width, train.ClassCount));
        Assert.Equal([0, 9, 4], train.Labels);
        Assert.Equal(Sequence(12), train.Pixels);
        Assert.Equal([5, 1], test.Labels);
    }

    [Fact]
    public void Load_rejects_a_label_that_is_not_one_of_ten_classes()
    {
        WriteFile("train-images-idx3-ubyte", Idx([2, 1, 1], Sequence(2)));
        WriteFile("train-labels-idx1-ubyte", Idx([2], [3, 10]));
        WriteFile("t10k-images-idx3-ubyte", Idx([1, 1, 1], Sequence(1)));
        WriteFile("t10k-labels-idx1-ubyte", Idx([1], [0]));

        var error = Assert.Throws<InvalidDataException>(() => DatasetCatalog.Load("mnist", _directory));

        Assert.Equal("labels: value 10 is not a class; expected 0 to 9", error.Message);
    }

    [Fact]
    public void Shipped_fashion_mnist_has_60000_train_and_10000_test_images_of_28_by_28_in_10_balanced_classes()
    {
        var (train, test) = DatasetCatalog.Load("fashion-mnist", Path.Combine(RepositoryRoot(), "data", "fashion-mnist"));

        Assert.Equal((60_000, 28, 28, 10), (train.Count, train.Height, train.Width, train.ClassCount));
        Assert.Equal((10_000, 28, 28, 10), (test.Count, test.Height, test.Width, test.ClassCount));
        Assert.Equal(60_000 * 28 * 28, train.Pixels.Length);
        Assert.Equal(10_000 * 28 * 28, test.Pixels.Length);
        Assert.Equal(Enumerable.Repeat(6_000, 10), CountPerClass(train.Labels));
        Assert.Equal(Enumerable.Repeat(1_000, 10), CountPerClass(test.Labels));
    }

    private static int[] CountPerClass(byte[] labels)
    {
        var counts = new int[10];
        foreach (byte label in labels) counts[label]++;
        return counts;
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Cluster.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no directory above {AppContext.BaseDirectory} holds Cluster.sln");
    }
}
