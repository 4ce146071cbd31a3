namespace Cluster.Worker.Data;

/// <summary>
/// A labelled set of 8-bit images held in memory as raw bytes, channel-major per image
/// ([C, H, W], as IDX and CIFAR-10 store them), with the pixel mean and standard deviation
/// (of x / 255) that inputs are normalised with.
/// </summary>
public sealed class ImageDataset
{
    // Fashion-MNIST's pixel mean and standard deviation (of x / 255) over the training set.
    public const double FashionMnistMean = 0.2860;
    public const double FashionMnistStd = 0.3530;

    public ImageDataset(byte[] pixels, byte[] labels, int height, int width, int classCount,
        int channels = 1, double pixelMean = FashionMnistMean, double pixelStd = FashionMnistStd)
    {
        if (labels.Length == 0 || channels <= 0 || pixels.Length != (long)labels.Length * channels * height * width)
            throw new ArgumentException($"pixels: {pixels.Length} bytes do not hold {labels.Length} images of {channels} x {height} x {width}");
        foreach (byte label in labels)
            if (label >= classCount)
                throw new InvalidDataException($"labels: value {label} is not a class; expected 0 to {classCount - 1}");
        (Pixels, Labels, Height, Width, ClassCount, Channels, PixelMean, PixelStd) =
            (pixels, labels, height, width, classCount, channels, pixelMean, pixelStd);
    }

    public byte[] Pixels { get; }
    public byte[] Labels { get; }
    public int Height { get; }
    public int Width { get; }
    public int ClassCount { get; }
    public int Channels { get; }
    public double PixelMean { get; }
    public double PixelStd { get; }
    public int Count => Labels.Length;
    public int PixelsPerImage => Channels * Height * Width;

    /// <summary>The first <paramref name="count"/> samples (all when 0 or larger than the set).</summary>
    public ImageDataset Take(int count) =>
        count <= 0 || count >= Count
            ? this
            : new ImageDataset(Pixels[..(count * PixelsPerImage)], Labels[..count], Height, Width, ClassCount, Channels, PixelMean, PixelStd);
}
