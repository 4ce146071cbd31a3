using System.Buffers.Binary;
using System.IO.Compression;
using Cluster.Worker.Data;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// The IDX reader on mutated and random files (raw and gzip): it returns data that matches its
/// header exactly, or throws InvalidDataException naming the file; nothing else, never a hang.
/// </summary>
[Trait("Tier", "unit")]
public sealed class IdxReaderFuzzTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("idx-fuzz-").FullName;

    private static byte[] ValidImages(int count, int height, int width)
    {
        var bytes = new byte[16 + count * height * width];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, 0x0000_0803);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4), count);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(8), height);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(12), width);
        new Random(1).NextBytes(bytes.AsSpan(16));
        return bytes;
    }

    [Fact]
    public void Mutated_and_random_headers_give_consistent_data_or_a_clear_error()
    {
        byte[] valid = ValidImages(count: 5, height: 4, width: 3);
        Fuzz.Run(seed: 16, cases: 5000, (random, i) =>
        {
            byte[] input = i % 5 == 4 ? Fuzz.RandomBytes(random, 64) : Fuzz.Mutate(random, valid);
            int dimensions = random.Next(4) == 0 ? random.Next(0, 5) : 3;
            Check(() => IdxFile.Parse(input, "fuzz.idx", dimensions), "fuzz.idx");
        });
    }

    [Fact]
    public void Mutated_gzip_files_give_consistent_data_or_a_clear_error()
    {
        byte[] gzip = Compress(ValidImages(count: 5, height: 4, width: 3));
        Fuzz.Run(seed: 17, cases: 400, (random, i) =>
        {
            string path = Path.Combine(_directory, $"case-{i}.gz");
            File.WriteAllBytes(path, Fuzz.Mutate(random, gzip));
            Check(() => IdxFile.Read(path, 3), path);
        });
    }

    private static void Check(Func<IdxFile.Content> read, string path)
    {
        IdxFile.Content content;
        try { content = read(); }
        catch (InvalidDataException e)
        {
            Assert.StartsWith(path + ":", e.Message, StringComparison.Ordinal);
            return;
        }
        long declared = content.Dimensions.Aggregate(1L, (product, d) => product * d);
        Assert.All(content.Dimensions, d => Assert.True(d > 0));
        Assert.Equal(declared, content.Data.LongLength);
    }

    private static byte[] Compress(byte[] raw)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest)) gzip.Write(raw);
        return output.ToArray();
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}
