namespace Cluster.Shared.Data;

/// <summary>
/// Where a dataset's files are, by dataset name, and which files make it up: what a worker
/// reads, and what the coordinator's data service ships to a worker that lacks them.
/// Search order: the job's data directory, then <c>data/&lt;name&gt;</c> in the working
/// directory and above it, then next to the program and above it (the repository ships
/// Fashion-MNIST there), then Debian's <c>/usr/share/datasets/&lt;name&gt;</c>.
/// </summary>
public static class DatasetFiles
{
    /// <summary>The four files of an IDX dataset (fashion-mnist, mnist), each plain or gzipped.</summary>
    public static IReadOnlyList<string> IdxFileStems { get; } =
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
    public const string Cifar10TestFile = "test_batch.bin";
    public static IReadOnlyList<string> Cifar10TrainFiles { get; } = [.. Enumerable.Range(1, 5).Select(i => $"data_batch_{i}.bin")];
    /// <summary>The default text corpus: the licence texts of Debian's base-files package.</summary>
    public const string TextDefaultDirectory = "/usr/share/common-licenses";

    /// <summary>Datasets made of files (all but the generated one).</summary>
    public static bool IsFileBased(string dataset) => dataset != "synthetic";

    /// <summary>The directory (or, for a text corpus, file or directory) holding the dataset, or an error naming where it looked.</summary>
    public static string Locate(string dataset, string? dataDir)
    {
        switch (dataset)
        {
            case "synthetic": return "(generated)";
            case "cifar10": return LocateCifar10(dataDir);
            case "text": return LocateText(dataDir);
        }
        if (dataDir is not null)
        {
            var missing = IdxFileStems.Where(stem => FindIdxFile(dataDir, stem) is null).ToList();
            if (missing.Count == 0) return dataDir;
            throw new FileNotFoundException(
                $"data: {dataDir} lacks {string.Join(", ", missing.Select(m => m + "[.gz]"))}; expected the four IDX files of {dataset}");
        }
        var candidates = DefaultDirectories(dataset).ToList();
        foreach (string candidate in candidates)
            if (IdxFileStems.All(stem => FindIdxFile(candidate, stem) is not null))
                return candidate;
        throw new FileNotFoundException(
            $"data: no directory with the four IDX files of {dataset} ({string.Join(", ", IdxFileStems.Select(s => s + "[.gz]"))}); looked in {string.Join(", ", candidates)}. Give --data DIR");
    }

    /// <summary>The files that make up the dataset found at <paramref name="location"/> (see <see cref="Locate"/>), in a fixed order.</summary>
    public static IReadOnlyList<string> Files(string dataset, string location) => dataset switch
    {
        "synthetic" => [],
        "cifar10" => [.. Cifar10TrainFiles.Append(Cifar10TestFile).Select(f => Path.Combine(location, f)).Where(File.Exists)],
        "text" => File.Exists(location) ? [location] : TextFiles(location),
        _ => [.. IdxFileStems.Select(stem => FindIdxFile(location, stem)!)],
    };

    public static IEnumerable<string> DefaultDirectories(string dataset)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
            yield return Path.Combine(dir.FullName, "data", dataset);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            yield return Path.Combine(dir.FullName, "data", dataset);
        yield return Path.Combine("/usr/share/datasets", dataset);
    }

    /// <summary>The IDX file of a stem in a directory, gzipped or plain; null when neither is there.</summary>
    public static string? FindIdxFile(string directory, string stem)
    {
        foreach (string name in new[] { stem + ".gz", stem })
        {
            string path = Path.Combine(directory, name);
            if (File.Exists(path)) return path;
        }
        return null;
    }

    /// <summary>The directory holding test_batch.bin and at least one data_batch_N.bin, or an error naming where it looked.</summary>
    public static string LocateCifar10(string? dataDir)
    {
        var candidates = dataDir is not null
            ? [dataDir, Path.Combine(dataDir, "cifar-10-batches-bin")]
            : DefaultDirectories("cifar10").SelectMany(d => new[] { d, Path.Combine(d, "cifar-10-batches-bin") }).ToList();
        foreach (string candidate in candidates)
            if (File.Exists(Path.Combine(candidate, Cifar10TestFile)) && Cifar10TrainFiles.Any(f => File.Exists(Path.Combine(candidate, f))))
                return candidate;
        string where = dataDir is null ? string.Join(", ", candidates) : dataDir;
        throw new FileNotFoundException(
            $"data: {where} lacks the CIFAR-10 binary files; expected {Cifar10TestFile} and data_batch_1.bin..data_batch_5.bin (cifar-10-binary.tar.gz, unpacked). Give --data DIR");
    }

    /// <summary>A text file, or a directory with at least one regular file.</summary>
    public static string LocateText(string? dataPath)
    {
        string path = dataPath ?? TextDefaultDirectory;
        if (File.Exists(path) || (Directory.Exists(path) && TextFiles(path).Count > 0)) return path;
        throw new FileNotFoundException(dataPath is null
            ? $"data: no default text corpus at {TextDefaultDirectory} (Debian's base-files package); give --data FILE or DIR of plain text"
            : $"data: {dataPath} is neither a text file nor a directory of text files; expected plain text");
    }

    /// <summary>A corpus directory's regular files in name order: symbolic links (GPL → GPL-3) would count a text twice.</summary>
    public static List<string> TextFiles(string directory) =>
        [.. new DirectoryInfo(directory).EnumerateFiles()
            .Where(f => f.LinkTarget is null)
            .Select(f => f.FullName)
            .Order(StringComparer.Ordinal)];
}
