using System.Runtime.InteropServices;
using Cluster.Protos;
using Google.Protobuf;

namespace Cluster.Shared.Wire;

/// <summary>
/// Moves flat float32 vectors to and from <see cref="TensorChunk"/>s. Sending wraps slices of
/// the caller's buffer without copying (the buffer must stay unchanged until the write has
/// completed); receiving copies each chunk straight into place after checking its bounds.
/// </summary>
public static class TensorWire
{
    /// <summary>Largest chunk payload a receiver accepts: well under gRPC's 4 MB message limit.</summary>
    public const int ChunkBytesMax = 1 << 20;

    /// <summary>
    /// Payload of the chunks senders cut: below .NET's large-object threshold (85,000 bytes), so
    /// that the receiver's per-message buffers are short-lived small objects, not LOH churn.
    /// </summary>
    public const int ChunkBytesSent = 64 << 10;

    private const int ElementBytes = sizeof(float);

    /// <summary>
    /// The chunks of <paramref name="elements"/> (of <paramref name="elementBytes"/> each, the first
    /// at element <paramref name="firstElement"/>), wrapping (not copying) the buffer.
    /// </summary>
    public static IEnumerable<TensorChunk> Chunks(ReadOnlyMemory<byte> elements, long firstElement = 0, int elementBytes = ElementBytes,
        int chunkBytes = ChunkBytesSent)
    {
        int step = chunkBytes / elementBytes * elementBytes;
        for (int offset = 0; offset < elements.Length; offset += step)
        {
            int length = Math.Min(step, elements.Length - offset);
            yield return new TensorChunk
            {
                OffsetElements = firstElement + offset / elementBytes,
                Data = UnsafeByteOperations.UnsafeWrap(elements.Slice(offset, length)),
            };
        }
    }

    /// <summary>
    /// Copies the next chunk of a stream into <paramref name="destination"/> after checking that it
    /// starts where the previous one ended (<paramref name="receivedElements"/>), so that a stream
    /// whose element count adds up also covers every element exactly once. Returns the new count.
    /// </summary>
    public static long CopyNextChunk(TensorChunk chunk, Span<byte> destination, long receivedElements)
    {
        if (chunk.OffsetElements != receivedElements)
            throw new InvalidDataException(
                $"chunk.offset_elements: {chunk.OffsetElements}; expected {receivedElements} (chunks arrive in order, without gaps or repeats)");
        return receivedElements + CopyChunk(chunk, destination);
    }

    /// <summary>Copies a received chunk into <paramref name="destination"/>; returns the elements written.</summary>
    public static int CopyChunk(TensorChunk chunk, Span<byte> destination)
    {
        var data = chunk.Data.Span;
        long elementCount = destination.Length / ElementBytes;
        if (data.Length % ElementBytes != 0)
            throw new InvalidDataException($"chunk.data: {data.Length} bytes is not a whole number of float32 elements");
        if (data.Length > ChunkBytesMax)
            throw new InvalidDataException($"chunk.data: {data.Length} bytes exceeds the chunk limit of {ChunkBytesMax} bytes");
        if (chunk.OffsetElements < 0 || chunk.OffsetElements > elementCount - data.Length / ElementBytes)
            throw new InvalidDataException(
                $"chunk.offset_elements: {chunk.OffsetElements} with {data.Length / ElementBytes} elements runs outside the vector of {elementCount} elements");
        data.CopyTo(destination[(int)(chunk.OffsetElements * ElementBytes)..]);
        return data.Length / ElementBytes;
    }

    /// <summary>A float view of a byte buffer.</summary>
    public static Span<float> AsFloats(Span<byte> bytes) => MemoryMarshal.Cast<byte, float>(bytes);
}
