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
}
