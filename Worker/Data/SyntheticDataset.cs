namespace Cluster.Worker.Data;

/// <summary>
/// A seeded, generated image dataset for tests and smoke runs: 10 classes of 1x28x28 images,
/// each a fixed random template of its class blended with per-sample noise. Every process
/// generates the same bytes; a small model learns it to high accuracy within an epoch.
/// </summary>
public static class SyntheticDataset
{
    public const int Side = 28;
    public const int ClassCount = 10;
    public const int TrainCount = 6000;
    public const int TestCount = 1000;
    private const int TemplateSeed = 20_241;
    private const double TemplateWeight = 0.5;

    public static DatasetCatalog.TrainTest Create()
    {
        var templates = new Random(TemplateSeed);
        var classes = new byte[ClassCount][];
        for (int c = 0; c < ClassCount; c++)
        {
            classes[c] = new byte[Side * Side];
            templates.NextBytes(classes[c]);
        }
        return new DatasetCatalog.TrainTest(Generate(classes, TrainCount, seed: 1), Generate(classes, TestCount, seed: 2));
    }

    private static ImageDataset Generate(byte[][] classes, int count, int seed)
    {
        var random = new Random(seed);
        var pixels = new byte[count * Side * Side];
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            int label = random.Next(ClassCount);
            labels[i] = (byte)label;
            var image = pixels.AsSpan(i * Side * Side, Side * Side);
            for (int p = 0; p < image.Length; p++)
                image[p] = (byte)(TemplateWeight * classes[label][p] + (1 - TemplateWeight) * random.Next(256));
        }
        return new ImageDataset(pixels, labels, Side, Side, ClassCount, channels: 1, pixelMean: 0.5, pixelStd: 0.2);
    }
}
