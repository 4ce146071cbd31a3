using System.Text;
using Cluster.Shared.Data;

namespace Cluster.Worker.Data;

/// <summary>
/// A character-level corpus: the text of one file, or of every regular file of a directory in
/// name order. The vocabulary is the set of characters present (ordinal order), so every rank
/// builds the same one. The first 90 % is the training split, the rest the validation split.
/// The default corpus is the licence texts that Debian's base-files package ships in
/// /usr/share/common-licenses (plain English, about 250 KB, on every Debian system).
/// </summary>
public sealed class TextCorpus
{
    public const string DefaultDirectory = DatasetFiles.TextDefaultDirectory;
    public const int Context = 64;
    public const int VocabularyMax = 1000;
    private const double TrainFraction = 0.9;

    private TextCorpus(char[] vocabulary, TextDataset train, TextDataset validation) =>
        (Vocabulary, Train, Validation) = (vocabulary, train, validation);

    public IReadOnlyList<char> Vocabulary { get; }
    public TextDataset Train { get; }
    public TextDataset Validation { get; }

    public static TextCorpus Load(string? dataPath) => FromText(ReadText(Locate(dataPath)));

    public static TextCorpus FromText(string text)
    {
        var vocabulary = text.Distinct().Order().ToArray();
        if (vocabulary.Length > VocabularyMax)
            throw new InvalidDataException($"text: {vocabulary.Length} distinct characters; expected at most {VocabularyMax}");
        var index = new Dictionary<char, int>();
        for (int i = 0; i < vocabulary.Length; i++) index[vocabulary[i]] = i;
        var tokens = text.Select(c => index[c]).ToArray();
        int split = (int)(tokens.Length * TrainFraction);
        if (tokens.Length - split < Context + 1)
            throw new InvalidDataException($"text: {tokens.Length} characters is too short; expected at least {(Context + 1) * 10}");
        // Training windows overlap by half a window; validation windows do not, so each token is scored once.
        return new TextCorpus(vocabulary, new TextDataset(tokens[..split], Context, Context / 2), new TextDataset(tokens[split..], Context, Context));
    }

    /// <summary>The file or directory the corpus is read from, or an error naming where it looked.</summary>
    public static string Locate(string? dataPath) => DatasetFiles.LocateText(dataPath);

    private static string ReadText(string path)
    {
        if (File.Exists(path)) return File.ReadAllText(path, Encoding.UTF8);
        var text = new StringBuilder();
        foreach (string file in DatasetFiles.TextFiles(path)) text.Append(File.ReadAllText(file, Encoding.UTF8)).Append('\n');
        return text.ToString();
    }
}

/// <summary>A split of a corpus as windows of context + 1 tokens starting every <c>stride</c> tokens.</summary>
public sealed class TextDataset(int[] tokens, int context, int stride)
{
    public int[] Tokens { get; } = tokens;
    public int Context { get; } = context;
    public int Stride { get; } = stride;
    public int Count { get; } = (tokens.Length - context - 1) / stride + 1;

    /// <summary>The first <paramref name="count"/> windows (all when 0 or larger than the split).</summary>
    public TextDataset Take(int count) =>
        count <= 0 || count >= Count ? this : new TextDataset(Tokens[..((count - 1) * Stride + Context + 1)], Context, Stride);
}
