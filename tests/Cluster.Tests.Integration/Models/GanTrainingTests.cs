using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Tasks;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Models;

/// <summary>
/// The DCGAN trained on a real local cluster (coordinator, parameter server, 2 workers as
/// processes, CPU) on a slice of Fashion-MNIST: it must not diverge and must write its grid.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class GanTrainingTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _outputDir = Directory.CreateTempSubdirectory("gan-test-").FullName;

    [Fact]
    public async Task Gan_trains_two_epochs_without_divergence_and_writes_a_sample_grid()
    {
        var epochs = await ModelZooTrainingTests.TrainAsync(output,
            "--model", "gan", "--dataset", "fashion-mnist", "--epochs", "2", "--batch-size", "32",
            "--train-limit", "4000", "--test-limit", "500", "--seed", "1", "--output-dir", _outputDir);

        Assert.Equal(2, epochs.Count);
        foreach (var epoch in epochs)
        {
            Assert.True(double.IsFinite(epoch.GetProperty("trainLoss").GetDouble()), "train loss is not finite");
            Assert.True(double.IsFinite(epoch.GetProperty("testLoss").GetDouble()), "test loss is not finite");
        }
        // The discriminator's accuracy on 500 real and 500 generated test-time images.
        double accuracy = epochs[^1].GetProperty("accuracy").GetDouble();
        var confusion = epochs[^1].GetProperty("confusion").EnumerateArray().Select(c => c.GetInt64()).ToArray();
        output.WriteLine($"discriminator accuracy {accuracy:P2}, confusion [fake→fake, fake→real, real→fake, real→real] = [{string.Join(", ", confusion)}]");
        Assert.Equal([500L, 500L], [confusion[0] + confusion[1], confusion[2] + confusion[3]]);
        Assert.InRange(accuracy, 0.02, 0.98);

        string losses = File.ReadAllText(Path.Combine(_outputDir, "gan-losses.csv"));
        output.WriteLine(losses);
        Assert.Equal(3, losses.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var (width, height, pixels) = ReadGrayPng(Path.Combine(_outputDir, "samples-epoch-2.png"));
        Assert.Equal((GanTask.GridPixels, GanTask.GridPixels), (width, height));
        // Generated images, not a blank canvas: the grid's gray levels vary.
        Assert.True(pixels.Distinct().Count() > 16, $"the sample grid has only {pixels.Distinct().Count()} gray levels");
    }

    [Fact]
    public async Task Gan_refuses_the_allreduce_scheme_with_a_clear_error()
    {
        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(1),
            ["local", "--workers", "2", "--model", "gan", "--scheme", "allreduce"]);

        Assert.Equal(2, exitCode);
        Assert.Contains("scheme: 'allreduce' is not supported for model 'gan'", stderr);
    }

    /// <summary>Checks the PNG structure (signature, chunk CRCs, IHDR, zlib IDAT) and returns its pixels.</summary>
    private static (int Width, int Height, byte[] Pixels) ReadGrayPng(string path)
    {
        byte[] png = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        int width = 0, height = 0, position = 8;
        using var idat = new MemoryStream();
        var types = new List<string>();
        while (position < png.Length)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(position));
            string type = Encoding.ASCII.GetString(png, position + 4, 4);
            var data = png.AsSpan(position + 8, length);
            Assert.Equal(BitwiseCrc32(png.AsSpan(position + 4, length + 4)), BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(position + 8 + length)));
            types.Add(type);
            if (type == "IHDR")
            {
                (width, height) = (BinaryPrimitives.ReadInt32BigEndian(data), BinaryPrimitives.ReadInt32BigEndian(data[4..]));
                Assert.Equal(new byte[] { 8, 0, 0, 0, 0 }, data[8..13].ToArray());
            }
            if (type == "IDAT") idat.Write(data);
            position += 12 + length;
        }
        Assert.Equal(["IHDR", "IDAT", "IEND"], types);
        idat.Position = 0;
        using var zlib = new ZLibStream(idat, CompressionMode.Decompress);
        using var raw = new MemoryStream();
        zlib.CopyTo(raw);
        byte[] rows = raw.ToArray();
        Assert.Equal((width + 1) * height, rows.Length);
        var pixels = new byte[width * height];
        for (int y = 0; y < height; y++)
        {
            Assert.Equal(0, rows[y * (width + 1)]);
            Array.Copy(rows, y * (width + 1) + 1, pixels, y * width, width);
        }
        return (width, height, pixels);
    }

    /// <summary>CRC-32 bit by bit (no table), independent of the encoder's.</summary>
    private static uint BitwiseCrc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (uint)-(int)(crc & 1));
        }
        return ~crc;
    }

    public void Dispose() => Directory.Delete(_outputDir, recursive: true);
}
