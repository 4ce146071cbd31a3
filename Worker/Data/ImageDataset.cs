namespace Cluster.Worker.Data;

/// <summary>A labelled set of 8-bit grayscale images held in memory as raw bytes.</summary>
public sealed class ImageDataset
{
    public ImageDataset(byte[] pixels, byte[] labels, int height, int width, int classCount)
    {
        if (labels.Length == 0 || pixels.Length != labels.Length * height * width)
            throw new ArgumentException($"pixels: {pixels.Length} bytes do not hold {labels.Length} images of {height} x {width}");
        foreach (byte label in labels)
            if (label >= classCount)
                throw new InvalidDataException($"labels: value {label} is not a class; expected 0 to {classCount - 1}");
        (Pixels, Labels, Height, Width, ClassCount) = (pixels, labels, height, width, classCount);
    }

    public byte[] Pixels { get; }
    public byte[] Labels { get; }
    public int Height { get; }
    public int Width { get; }
    public int ClassCount { get; }
    public int Count => Labels.Length;
    public int PixelsPerImage => Height * Width;

    /// <summary>The first <paramref name="count"/> samples (all when 0 or larger than the set).</summary>
    public ImageDataset Take(int count) =>
        count <= 0 || count >= Count
            ? this
            : new ImageDataset(Pixels[..(count * PixelsPerImage)], Labels[..count], Height, Width, ClassCount);
}
