using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Wire;

/// <summary>What a wire type carries of float32 values.</summary>
public static class WireValues
{
    /// <summary><paramref name="values"/> encoded as <paramref name="dtype"/> and decoded again: the floats a receiver gets.</summary>
    public static float[] Carried(float[] values, DType dtype)
    {
        var bytes = new byte[values.Length * ElementCodec.ElementBytes(dtype)];
        ElementCodec.Encode(values, bytes, dtype);
        var decoded = new float[values.Length];
        ElementCodec.Decode(bytes, decoded, dtype);
        return decoded;
    }

    /// <summary>Writes <paramref name="values"/> into a rank's buffer as a parameter server stores a dense push of <paramref name="dtype"/> (2-byte types as they came).</summary>
    public static void StoreAsPushed(Span<float> buffer, float[] values, DType dtype)
    {
        if (dtype == DType.Float32) values.CopyTo(buffer);
        else ElementCodec.Encode(values, MemoryMarshal.AsBytes(buffer)[..(values.Length * 2)], dtype);
    }
}
