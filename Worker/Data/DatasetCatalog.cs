using Cluster.Shared.Data;

namespace Cluster.Worker.Data;

/// <summary>
/// Finds and loads datasets by name: the image datasets (IDX: fashion-mnist, mnist; CIFAR-10
/// binary: cifar10; generated: synthetic) and the text corpus (text, see <see cref="TextCorpus"/>).
/// Search order for files: the job's data directory, then
/// <c>data/&lt;name&gt;</c> in the working directory and above it (the repository ships
/// Fashion-MNIST there), then Debian's <c>/usr/share/datasets/&lt;name&gt;</c>.
/// </summary>
public static class DatasetCatalog
{
    public sealed record TrainTest(ImageDataset Train, ImageDataset Test);

    public static TrainTest Load(string dataset, string? dataDir)
    {
        if (dataset == "synthetic") return SyntheticDataset.Create();
        if (dataset == "cifar10") return Cifar10File.Load(Cifar10File.Locate(dataDir));
        if (dataset == "text") throw new ArgumentException("dataset: 'text' is a corpus, not images; load it with TextCorpus");
        string directory = Locate(dataset, dataDir);
        return new TrainTest(
            LoadSplit(directory, "train", classCount: 10),
            LoadSplit(directory, "t10k", classCount: 10));
    }

    /// <summary>Where the dataset's files are (the four IDX files' directory for IDX sets), or an error naming what is missing where.</summary>
    public static string Locate(string dataset, string? dataDir) => DatasetFiles.Locate(dataset, dataDir);

    public static IEnumerable<string> DefaultDirectories(string dataset) => DatasetFiles.DefaultDirectories(dataset);

    private static ImageDataset LoadSplit(string directory, string split, int classCount)
    {
        string imagesPath = DatasetFiles.FindIdxFile(directory, $"{split}-images-idx3-ubyte")!;
        string labelsPath = DatasetFiles.FindIdxFile(directory, $"{split}-labels-idx1-ubyte")!;
        var images = IdxFile.Read(imagesPath, expectedDimensions: 3);
        var labels = IdxFile.Read(labelsPath, expectedDimensions: 1);
        if (images.Dimensions[0] != labels.Dimensions[0])
            throw new InvalidDataException(
                $"{labelsPath}: {labels.Dimensions[0]} labels for {images.Dimensions[0]} images in {imagesPath}; expected the same count");
        return new ImageDataset(images.Data, labels.Data, images.Dimensions[1], images.Dimensions[2], classCount);
    }
}
