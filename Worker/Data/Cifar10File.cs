using Cluster.Shared.Data;

namespace Cluster.Worker.Data;

/// <summary>
/// Reads CIFAR-10's binary version (cifar-10-binary.tar.gz, unpacked): files of 3073-byte
/// records, one label byte (0-9) then 1024 red, 1024 green and 1024 blue pixels of a 32x32
/// image, row-major. Training files are data_batch_1.bin to data_batch_5.bin (those present,
/// in order), the test file test_batch.bin; the directory may also hold them in
/// cifar-10-batches-bin/.
/// </summary>
public static class Cifar10File
{
    public const int Side = 32;
    public const int Channels = 3;
    public const int ClassCount = 10;
    public const int RecordBytes = 1 + Channels * Side * Side;
    public const string TestFile = DatasetFiles.Cifar10TestFile;
    // Mean and standard deviation of CIFAR-10's training pixels (x / 255), over all channels.
    private const double PixelMean = 0.4734;
    private const double PixelStd = 0.2516;

    public static IReadOnlyList<string> TrainFiles => DatasetFiles.Cifar10TrainFiles;

    public static DatasetCatalog.TrainTest Load(string directory)
    {
        var train = TrainFiles.Select(f => Path.Combine(directory, f)).Where(File.Exists).ToList();
        return new DatasetCatalog.TrainTest(Read(train), Read([Path.Combine(directory, TestFile)]));
    }

    /// <summary>The directory holding test_batch.bin and at least one data_batch_N.bin, or an error naming where it looked.</summary>
    public static string Locate(string? dataDir) => DatasetFiles.LocateCifar10(dataDir);

    public static ImageDataset Read(IReadOnlyList<string> paths)
    {
        var pixels = new List<byte[]>();
        var labels = new List<byte>();
        foreach (string path in paths)
        {
            byte[] bytes = File.ReadAllBytes(path);
            if (bytes.Length == 0 || bytes.Length % RecordBytes != 0)
                throw new InvalidDataException($"{path}: {bytes.Length} bytes is not a whole number of {RecordBytes}-byte CIFAR-10 records");
            for (int offset = 0; offset < bytes.Length; offset += RecordBytes)
            {
                byte label = bytes[offset];
                if (label >= ClassCount)
                    throw new InvalidDataException($"{path}: record {offset / RecordBytes} has label {label}; expected 0 to {ClassCount - 1}");
                labels.Add(label);
                pixels.Add(bytes[(offset + 1)..(offset + RecordBytes)]);
            }
        }
        if (labels.Count == 0) throw new InvalidDataException("CIFAR-10: no records read");
        return new ImageDataset(
            [.. pixels.SelectMany(p => p)], [.. labels], Side, Side, ClassCount, Channels, PixelMean, PixelStd);
    }
}
