namespace Cluster.Worker.Models;

/// <summary>
/// What a model must fit: images [N, Channels, Height, Width] to ClassCount logits, or, for the
/// character language models, token windows [N, Context] over a vocabulary of ClassCount symbols.
/// </summary>
public sealed record ModelShape(int Channels, int Height, int Width, int ClassCount, int Context = 0)
{
    public static ModelShape Image(int channels, int height, int width, int classCount) => new(channels, height, width, classCount);

    public static ModelShape Text(int vocabulary, int context) => new(0, 0, 0, vocabulary, context);
}
