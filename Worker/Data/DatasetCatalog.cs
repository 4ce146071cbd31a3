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
    private static readonly string[] FileStems =
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

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
    public static string Locate(string dataset, string? dataDir)
    {
        switch (dataset)
        {
            case "synthetic": return "(generated)";
            case "cifar10": return Cifar10File.Locate(dataDir);
            case "text": return TextCorpus.Locate(dataDir);
        }
        if (dataDir is not null)
        {
            var missing = FileStems.Where(stem => FindFile(dataDir, stem) is null).ToList();
            if (missing.Count == 0) return dataDir;
            throw new FileNotFoundException(
                $"data: {dataDir} lacks {string.Join(", ", missing.Select(m => m + "[.gz]"))}; expected the four IDX files of {dataset}");
        }
        var candidates = DefaultDirectories(dataset).ToList();
        foreach (string candidate in candidates)
            if (FileStems.All(stem => FindFile(candidate, stem) is not null))
                return candidate;
        throw new FileNotFoundException(
            $"data: no directory with the four IDX files of {dataset} ({string.Join(", ", FileStems.Select(s => s + "[.gz]"))}); looked in {string.Join(", ", candidates)}. Give --data DIR");
    }

    public static IEnumerable<string> DefaultDirectories(string dataset)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
            yield return Path.Combine(dir.FullName, "data", dataset);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            yield return Path.Combine(dir.FullName, "data", dataset);
        yield return Path.Combine("/usr/share/datasets", dataset);
    }

    private static string? FindFile(string directory, string stem)
    {
        foreach (string name in new[] { stem + ".gz", stem })
        {
            string path = Path.Combine(directory, name);
            if (File.Exists(path)) return path;
        }
        return null;
    }

    private static ImageDataset LoadSplit(string directory, string split, int classCount)
    {
        string imagesPath = FindFile(directory, $"{split}-images-idx3-ubyte")!;
        string labelsPath = FindFile(directory, $"{split}-labels-idx1-ubyte")!;
        var images = IdxFile.Read(imagesPath, expectedDimensions: 3);
        var labels = IdxFile.Read(labelsPath, expectedDimensions: 1);
        if (images.Dimensions[0] != labels.Dimensions[0])
            throw new InvalidDataException(
                $"{labelsPath}: {labels.Dimensions[0]} labels for {images.Dimensions[0]} images in {imagesPath}; expected the same count");
        return new ImageDataset(images.Data, labels.Data, images.Dimensions[1], images.Dimensions[2], classCount);
    }
}
