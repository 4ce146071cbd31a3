using System.Buffers.Binary;
using System.IO.Compression;

namespace Cluster.Worker.Data;

/// <summary>
/// Reads the IDX format of MNIST and Fashion-MNIST (raw or gzip): a magic number
/// <c>0x0000TTDD</c> (TT = 0x08 unsigned bytes, DD = number of dimensions), DD big-endian
/// 32-bit sizes, then the data. Header sizes are checked against the bytes actually present.
/// </summary>
public static class IdxFile
{
    private const int UnsignedByteType = 0x08;
    private const long ElementsMax = 1L << 31;

    /// <summary>Dimensions and unsigned-byte data of an IDX file.</summary>
    public sealed record Content(int[] Dimensions, byte[] Data);

    public static Content Read(string path, int expectedDimensions)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
            if (bytes.Length >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b)
                bytes = Gunzip(bytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            throw new InvalidDataException($"{path}: cannot be read ({e.Message})", e);
        }
        return Parse(bytes, path, expectedDimensions);
    }

    public static Content Parse(ReadOnlySpan<byte> bytes, string path, int expectedDimensions)
    {
        if (bytes.Length < 4)
            throw new InvalidDataException($"{path}: {bytes.Length} bytes is too short for an IDX header; expected at least 4");
        if (bytes[0] != 0 || bytes[1] != 0 || bytes[2] != UnsignedByteType)
            throw new InvalidDataException(
                $"{path}: magic number 0x{BinaryPrimitives.ReadUInt32BigEndian(bytes):X8} is not an IDX file of unsigned bytes; expected 0x000008{expectedDimensions:X2}");
        int dimensionCount = bytes[3];
        if (dimensionCount != expectedDimensions)
            throw new InvalidDataException($"{path}: has {dimensionCount} dimensions; expected {expectedDimensions}");
        int headerBytes = 4 + 4 * dimensionCount;
        if (bytes.Length < headerBytes)
            throw new InvalidDataException($"{path}: {bytes.Length} bytes is too short for a header of {dimensionCount} dimensions");

        var dimensions = new int[dimensionCount];
        long elementCount = 1;
        for (int d = 0; d < dimensionCount; d++)
        {
            uint size = BinaryPrimitives.ReadUInt32BigEndian(bytes[(4 + 4 * d)..]);
            if (size == 0 || size > int.MaxValue)
                throw new InvalidDataException($"{path}: dimension {d} has size {size}; expected 1 to {int.MaxValue}");
            dimensions[d] = (int)size;
            elementCount *= size;
            if (elementCount > ElementsMax)
                throw new InvalidDataException($"{path}: more than {ElementsMax} elements declared; expected a dataset that fits in memory");
        }
        if (bytes.Length - headerBytes != elementCount)
            throw new InvalidDataException(
                $"{path}: header declares {elementCount} data bytes ({string.Join(" x ", dimensions)}) but the file holds {bytes.Length - headerBytes}");
        return new Content(dimensions, bytes[headerBytes..].ToArray());
    }

    private static byte[] Gunzip(byte[] compressed)
    {
        using var input = new GZipStream(new MemoryStream(compressed), CompressionMode.Decompress);
        using var output = new MemoryStream();
        input.CopyTo(output);
        return output.ToArray();
    }
}
