using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Cluster.Protos;

namespace Cluster.Shared.Wire;

/// <summary>
/// Decodes the chunks of a stream into a float32 buffer. Chunks must arrive in element order
/// without gaps or repeats (each starts where the previous ended), so that a stream whose
/// count adds up has covered every element exactly once. Every length, offset and index is
/// checked against the buffer before anything is written.
/// </summary>
public static class ChunkReader
{
    /// <summary>A dense chunk of <paramref name="dtype"/> elements; returns the elements received so far.</summary>
    public static long ReadDense(TensorChunk chunk, DType dtype, Span<float> destination, long receivedElements)
    {
        if (chunk.Indices.Length != 0)
            throw new InvalidDataException("chunk.indices: present in a dense stream; expected none");
        int elementBytes = ElementCodec.ElementBytes(dtype);
        var data = chunk.Data.Span;
        CheckRun(chunk, data.Length, elementBytes, destination.Length, receivedElements, out int count);
        ElementCodec.Decode(data, destination.Slice((int)chunk.OffsetElements, count), dtype);
        return receivedElements + count;
    }

    /// <summary>
    /// A dense chunk kept as it came: its <paramref name="dtype"/> elements are copied, not decoded,
    /// into <paramref name="elements"/>, the packed elements of the whole vector (element i at byte
    /// i * element size); returns the elements received so far. The same checks as <see cref="ReadDense"/>.
    /// </summary>
    public static long ReadDenseEncoded(TensorChunk chunk, DType dtype, Span<byte> elements, long receivedElements)
    {
        if (chunk.Indices.Length != 0)
            throw new InvalidDataException("chunk.indices: present in a dense stream; expected none");
        int elementBytes = ElementCodec.ElementBytes(dtype);
        var data = chunk.Data.Span;
        CheckRun(chunk, data.Length, elementBytes, elements.Length / elementBytes, receivedElements, out int count);
        data.CopyTo(elements.Slice((int)chunk.OffsetElements * elementBytes, count * elementBytes));
        return receivedElements + count;
    }

    /// <summary>
    /// A sparse chunk: the run [offset, offset + length_elements) becomes zero but for the
    /// elements named by <c>indices</c>, which take the values in <c>data</c>.
    /// </summary>
    public static long ReadSparse(TensorChunk chunk, DType dtype, Span<float> destination, long receivedElements)
    {
        int elementBytes = ElementCodec.ElementBytes(dtype);
        if (chunk.OffsetElements != receivedElements)
            throw new InvalidDataException(
                $"chunk.offset_elements: {chunk.OffsetElements}; expected {receivedElements} (chunks arrive in order, without gaps or repeats)");
        if (chunk.LengthElements <= 0 || chunk.LengthElements > destination.Length - receivedElements)
            throw new InvalidDataException(
                $"chunk.length_elements: {chunk.LengthElements} from offset {chunk.OffsetElements} runs outside the vector of {destination.Length} elements");
        var indexBytes = chunk.Indices.Span;
        var data = chunk.Data.Span;
        if (indexBytes.Length % sizeof(uint) != 0 || data.Length != indexBytes.Length / sizeof(uint) * elementBytes)
            throw new InvalidDataException(
                $"chunk.indices: {indexBytes.Length} bytes of indices do not match {data.Length} bytes of {dtype} values");
        if (data.Length > TensorWire.ChunkBytesMax || indexBytes.Length > TensorWire.ChunkBytesMax)
            throw new InvalidDataException($"chunk.data: more than the chunk limit of {TensorWire.ChunkBytesMax} bytes");

        var run = destination.Slice((int)chunk.OffsetElements, (int)chunk.LengthElements);
        var indices = MemoryMarshal.Cast<byte, uint>(indexBytes);
        long previous = -1;
        for (int i = 0; i < indices.Length; i++)
        {
            uint index = Index(indices, i);
            if (index <= previous || index >= run.Length)
                throw new InvalidDataException(
                    $"chunk.indices: index {index} at position {i} is not strictly increasing within the run of {run.Length} elements");
            previous = index;
        }
        // Everything is checked: now the run can be written.
        Span<float> values = indices.Length <= 4096 ? stackalloc float[indices.Length] : new float[indices.Length];
        ElementCodec.Decode(data, values, dtype);
        run.Clear();
        for (int i = 0; i < indices.Length; i++) run[(int)Index(indices, i)] = values[i];
        return receivedElements + run.Length;
    }

    private static uint Index(ReadOnlySpan<uint> indices, int i) =>
        BitConverter.IsLittleEndian ? indices[i] : BinaryPrimitives.ReverseEndianness(indices[i]);

    private static void CheckRun(TensorChunk chunk, int dataBytes, int elementBytes, int elementCount, long receivedElements, out int count)
    {
        if (chunk.OffsetElements != receivedElements)
            throw new InvalidDataException(
                $"chunk.offset_elements: {chunk.OffsetElements}; expected {receivedElements} (chunks arrive in order, without gaps or repeats)");
        if (dataBytes % elementBytes != 0)
            throw new InvalidDataException($"chunk.data: {dataBytes} bytes is not a whole number of {elementBytes}-byte elements");
        if (dataBytes > TensorWire.ChunkBytesMax)
            throw new InvalidDataException($"chunk.data: {dataBytes} bytes exceeds the chunk limit of {TensorWire.ChunkBytesMax} bytes");
        count = dataBytes / elementBytes;
        if (count > elementCount - receivedElements)
            throw new InvalidDataException(
                $"chunk.offset_elements: {chunk.OffsetElements} with {count} elements runs outside the vector of {elementCount} elements");
    }
}
