using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Cluster.Protos;

namespace Cluster.Shared.Wire;

/// <summary>
/// Float32 to and from the wire's element types: float32 (a plain copy), bfloat16 (the upper
/// half of a float32, rounded to nearest even; NaN stays NaN) and float16 (IEEE half). All
/// conversions are SIMD over spans.
/// </summary>
public static class ElementCodec
{
    public static int ElementBytes(DType dtype) => dtype switch
    {
        DType.Float32 => 4,
        DType.Bfloat16 or DType.Float16 => 2,
        _ => throw new InvalidDataException($"dtype: {dtype} is not a known element type; expected float32, bfloat16 or float16"),
    };

    /// <summary>Parses "float32", "bfloat16", "float16" (as in job specs).</summary>
    public static DType Parse(string name) => name switch
    {
        "float32" or "" => DType.Float32,
        "bfloat16" => DType.Bfloat16,
        "float16" => DType.Float16,
        _ => throw new ArgumentException($"wire-dtype: '{name}' is not a wire type; expected float32, bfloat16 or float16"),
    };

    public static readonly IReadOnlyList<string> Names = ["float32", "bfloat16", "float16"];

    /// <summary>Writes <paramref name="source"/> as <paramref name="dtype"/> into <paramref name="destination"/>.</summary>
    public static void Encode(ReadOnlySpan<float> source, Span<byte> destination, DType dtype)
    {
        switch (dtype)
        {
            case DType.Float32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case DType.Float16:
                TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination)[..source.Length]);
                break;
            case DType.Bfloat16:
                EncodeBFloat16(source, MemoryMarshal.Cast<byte, ushort>(destination)[..source.Length]);
                break;
            default:
                throw new InvalidDataException($"dtype: {dtype} is not a known element type");
        }
    }

    /// <summary>Reads <paramref name="source"/> (elements of <paramref name="dtype"/>) into <paramref name="destination"/>.</summary>
    public static void Decode(ReadOnlySpan<byte> source, Span<float> destination, DType dtype)
    {
        switch (dtype)
        {
            case DType.Float32:
                source.CopyTo(MemoryMarshal.AsBytes(destination));
                break;
            case DType.Float16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source), destination);
                break;
            case DType.Bfloat16:
                DecodeBFloat16(MemoryMarshal.Cast<byte, ushort>(source), destination);
                break;
            default:
                throw new InvalidDataException($"dtype: {dtype} is not a known element type");
        }
    }

    /// <summary>
    /// Whether every element of <paramref name="elements"/> (of <paramref name="dtype"/>) is finite:
    /// no NaN or infinity, told apart by an exponent of all ones, without decoding.
    /// </summary>
    public static bool AllFinite(ReadOnlySpan<byte> elements, DType dtype)
    {
        if (dtype == DType.Float32) return float.IsFinite(TensorPrimitives.MaxMagnitude(MemoryMarshal.Cast<byte, float>(elements)));
        ushort exponent = dtype switch
        {
            DType.Bfloat16 => 0x7F80,
            DType.Float16 => 0x7C00,
            _ => throw new InvalidDataException($"dtype: {dtype} is not a known element type"),
        };
        var bits = MemoryMarshal.Cast<byte, ushort>(elements);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var mask = Vector256.Create(exponent);
            for (; i <= bits.Length - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
                if (Vector256.EqualsAny(Vector256.Create(bits.Slice(i, Vector256<ushort>.Count)) & mask, mask)) return false;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & exponent) == exponent) return false;
        return true;
    }

    private static void EncodeBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        var bits = MemoryMarshal.Cast<float, uint>(source);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256.Create(1u);
            var bias = Vector256.Create(0x7FFFu);
            var quietNaN = Vector256.Create(0x7FC0_0000u);
            for (; i <= bits.Length - 2 * Vector256<uint>.Count; i += 2 * Vector256<uint>.Count)
            {
                var low = RoundToBFloat16(Vector256.Create(bits.Slice(i, Vector256<uint>.Count)), Vector256.Create(source.Slice(i, Vector256<float>.Count)), one, bias, quietNaN);
                var high = RoundToBFloat16(Vector256.Create(bits.Slice(i + Vector256<uint>.Count, Vector256<uint>.Count)),
                    Vector256.Create(source.Slice(i + Vector256<float>.Count, Vector256<float>.Count)), one, bias, quietNaN);
                Vector256.Narrow(low, high).CopyTo(destination[i..]);
            }
        }
        for (; i < bits.Length; i++) destination[i] = ToBFloat16(source[i]);
    }

    /// <summary>Eight float32 values as bfloat16, rounded as <see cref="Encode"/> rounds them.</summary>
    public static Vector128<ushort> ToBFloat16(Vector256<float> values)
    {
        var rounded = RoundToBFloat16(values.AsUInt32(), values, Vector256.Create(1u), Vector256.Create(0x7FFFu), Vector256.Create(0x7FC0_0000u));
        return Vector128.Narrow(rounded.GetLower(), rounded.GetUpper());
    }

    /// <summary>Eight bfloat16 elements as the float32 values they stand for (exact).</summary>
    public static Vector256<float> FromBFloat16(Vector128<ushort> elements) => (Vector256.WidenLower(elements.ToVector256()) << 16).AsSingle();

    /// <summary>One float32 value as bfloat16, rounded as <see cref="Encode"/> rounds it.</summary>
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        return float.IsNaN(value) ? (ushort)0x7FC0 : (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    /// <summary>One bfloat16 element as the float32 value it stands for.</summary>
    public static float FromBFloat16(ushort element) => BitConverter.UInt32BitsToSingle((uint)element << 16);

    private static Vector256<uint> RoundToBFloat16(Vector256<uint> bits, Vector256<float> values, Vector256<uint> one, Vector256<uint> bias, Vector256<uint> quietNaN)
    {
        var rounded = bits + bias + ((bits >> 16) & one);
        var isNaN = ~Vector256.Equals(values, values).AsUInt32();
        return Vector256.ConditionalSelect(isNaN, quietNaN, rounded) >> 16;
    }

    private static void DecodeBFloat16(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        var bits = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= source.Length - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                var (low, high) = Vector256.Widen(Vector256.Create(source.Slice(i, Vector256<ushort>.Count)));
                (low << 16).CopyTo(bits[i..]);
                (high << 16).CopyTo(bits[(i + Vector256<uint>.Count)..]);
            }
        }
        for (; i < source.Length; i++) destination[i] = FromBFloat16(source[i]);
    }
}
