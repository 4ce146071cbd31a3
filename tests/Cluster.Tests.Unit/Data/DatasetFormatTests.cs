using Cluster.Worker.Data;
using Cluster.Worker.Tasks;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Tests.Unit.Data;

/// <summary>CIFAR-10 binary files written here, the synthetic set, the text corpus and the classifier losses.</summary>
[Trait("Tier", "unit")]
public sealed class DatasetFormatTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("dataset-tests-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    /// <summary>CIFAR-10 records: label byte, then 1024 red, 1024 green, 1024 blue bytes; pixel i of record r is (r + i) mod 256.</summary>
    public static byte[] CifarRecords(int count, int firstLabel)
    {
        var bytes = new byte[count * Cifar10File.RecordBytes];
        for (int r = 0; r < count; r++)
        {
            bytes[r * Cifar10File.RecordBytes] = (byte)((firstLabel + r) % 10);
            for (int i = 0; i < Cifar10File.RecordBytes - 1; i++) bytes[r * Cifar10File.RecordBytes + 1 + i] = (byte)(r + i);
        }
        return bytes;
    }

    [Fact]
    public void Cifar10_binary_files_are_read_in_order_with_channel_major_pixels()
    {
        string batches = Directory.CreateDirectory(Path.Combine(_directory, "cifar-10-batches-bin")).FullName;
        File.WriteAllBytes(Path.Combine(batches, "data_batch_1.bin"), CifarRecords(3, firstLabel: 0));
        File.WriteAllBytes(Path.Combine(batches, "data_batch_2.bin"), CifarRecords(2, firstLabel: 5));
        File.WriteAllBytes(Path.Combine(batches, "test_batch.bin"), CifarRecords(4, firstLabel: 7));

        Assert.Equal(batches, Cifar10File.Locate(_directory));
        var data = DatasetCatalog.Load("cifar10", _directory);

        Assert.Equal(new byte[] { 0, 1, 2, 5, 6 }, data.Train.Labels);
        Assert.Equal(new byte[] { 7, 8, 9, 0 }, data.Test.Labels);
        Assert.Equal((3, 32, 32), (data.Train.Channels, data.Train.Height, data.Train.Width));
        // Record 1 of data_batch_2 is the 5th training image; its green pixel (row 2, column 3) is byte 1 + 1024 + 2 * 32 + 3 of the record.
        int pixel = 1024 + 2 * 32 + 3;
        Assert.Equal((byte)(1 + pixel), data.Train.Pixels[4 * 3072 + pixel]);

        using var loader = new BatchLoader(data.Train, torch.CPU);
        var (inputs, labels) = loader.Batch([4]);
        Assert.Equal(new long[] { 1, 3, 32, 32 }, inputs.shape);
        Assert.Equal(6, labels[0].item<long>());
    }

    [Theory]
    [InlineData(3073 * 2 - 1, "is not a whole number of 3073-byte CIFAR-10 records")]
    [InlineData(0, "is not a whole number")]
    public void Broken_cifar10_files_are_refused_with_the_reason(int length, string expected)
    {
        string path = Path.Combine(_directory, "data_batch_1.bin");
        File.WriteAllBytes(path, CifarRecords(2, 0)[..length]);
        var error = Assert.Throws<InvalidDataException>(() => Cifar10File.Read([path]));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_cifar10_label_out_of_range_is_refused()
    {
        var bytes = CifarRecords(2, 0);
        bytes[Cifar10File.RecordBytes] = 10;
        string path = Path.Combine(_directory, "test_batch.bin");
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<InvalidDataException>(() => Cifar10File.Read([path]));
        Assert.Contains("record 1 has label 10", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_directory_without_cifar10_files_is_named_in_the_error()
    {
        var error = Assert.Throws<FileNotFoundException>(() => Cifar10File.Locate(_directory));
        Assert.Contains($"data: {_directory} lacks the CIFAR-10 binary files", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_synthetic_dataset_is_the_same_in_every_process_and_has_every_class()
    {
        var first = SyntheticDataset.Create();
        var second = SyntheticDataset.Create();
        Assert.Equal(first.Train.Pixels, second.Train.Pixels);
        Assert.Equal(first.Test.Labels, second.Test.Labels);
        Assert.Equal((SyntheticDataset.TrainCount, SyntheticDataset.TestCount), (first.Train.Count, first.Test.Count));
        Assert.Equal(10, first.Train.Labels.Distinct().Count());
        Assert.NotEqual(first.Train.Pixels[..784], first.Train.Pixels[784..1568]);
    }

    [Fact]
    public void The_text_corpus_encodes_characters_and_cuts_windows()
    {
        string text = string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. ", 40));
        var corpus = TextCorpus.FromText(text);

        Assert.Equal(text.Distinct().Order().ToArray(), corpus.Vocabulary);
        Assert.Equal(text.Length, corpus.Train.Tokens.Length + corpus.Validation.Tokens.Length);
        Assert.Equal(text[0], corpus.Vocabulary[corpus.Train.Tokens[0]]);
        Assert.Equal(text[^1], corpus.Vocabulary[corpus.Validation.Tokens[^1]]);
        int context = TextCorpus.Context;
        Assert.Equal((corpus.Train.Tokens.Length - context - 1) / (context / 2) + 1, corpus.Train.Count);
        Assert.Equal((corpus.Validation.Tokens.Length - context - 1) / context + 1, corpus.Validation.Count);
        var three = corpus.Train.Take(3);
        Assert.Equal(3, three.Count);
    }

    [Fact]
    public void The_default_corpus_is_debians_licence_texts_without_duplicates()
    {
        Assert.Equal(TextCorpus.DefaultDirectory, TextCorpus.Locate(null));
        var corpus = TextCorpus.Load(null);
        int regularBytes = new DirectoryInfo(TextCorpus.DefaultDirectory).EnumerateFiles().Where(f => f.LinkTarget is null).Sum(f => (int)f.Length);
        int characters = corpus.Train.Tokens.Length + corpus.Validation.Tokens.Length;
        // UTF-8 bytes ≥ characters; the symbolic links (GPL → GPL-3, ...) are not read twice.
        Assert.InRange(characters, regularBytes * 0.95, regularBytes + 100);
        Assert.InRange(corpus.Vocabulary.Count, 60, 200);
    }

    [Theory]
    [InlineData("cross-entropy")]
    [InlineData("mse")]
    [InlineData("bce")]
    public void Losses_match_their_definitions(string kind)
    {
        using var scope = torch.NewDisposeScope();
        var logits = torch.tensor(new float[] { 2f, -1f, 0.5f, 0f, 1f, -2f }).reshape(2, 3);
        var labels = torch.tensor(new long[] { 0, 2 });
        var loss = new Losses(kind);
        double[][] z = [[2, -1, 0.5], [0, 1, -2]];
        int[] y = [0, 2];
        double expectedSum = 0;
        for (int n = 0; n < 2; n++)
        {
            double logSumExp = Math.Log(z[n].Sum(Math.Exp));
            double sample = kind switch
            {
                "cross-entropy" => logSumExp - z[n][y[n]],
                "mse" => Enumerable.Range(0, 3).Average(c => Math.Pow(Math.Exp(z[n][c] - logSumExp) - (c == y[n] ? 1 : 0), 2)),
                _ => Enumerable.Range(0, 3).Average(c =>
                    -(c == y[n] ? Math.Log(1 / (1 + Math.Exp(-z[n][c]))) : Math.Log(1 - 1 / (1 + Math.Exp(-z[n][c]))))),
            };
            expectedSum += sample;
        }
        Assert.Equal(expectedSum, loss.Sum(logits, labels).item<float>(), 5);
        Assert.Equal(expectedSum / 2, loss.Mean(logits, labels).item<float>(), 5);
    }
}
