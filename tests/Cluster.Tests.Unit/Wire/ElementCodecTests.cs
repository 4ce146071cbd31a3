using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="ElementCodec"/>: float32 copied as is, bfloat16 rounded to nearest even (NaN
/// stays NaN) and float16 as IEEE half, the same on the SIMD blocks as on the scalar tail.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ElementCodecTests
{
    // Lengths around the 16-element SIMD block of the bfloat16 encoder, so every element
    // position lands on the vector path in one length and on the scalar tail in another.
    public static TheoryData<int> Lengths() => [0, 1, 7, 15, 16, 17, 31, 32, 33, 100, 1000, 1003];

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Float32_round_trips_bit_for_bit(int length)
    {
        float[] source = RandomFloats(new Random(length), length, withSpecials: true);

        float[] decoded = RoundTrip(source, DType.Float32, out byte[] encoded);

        Assert.Equal(length * 4, encoded.Length);
        Assert.True(MemoryMarshal.AsBytes(source.AsSpan()).SequenceEqual(encoded), "float32 bytes differ from the source");
        Assert.Equal(Bits(source), Bits(decoded));
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Bfloat16_encoding_equals_a_scalar_round_to_nearest_even_reference(int length)
    {
        float[] source = RandomFloats(new Random(100 + length), length, withSpecials: false);

        byte[] encoded = new byte[length * 2];
        ElementCodec.Encode(source, encoded, DType.Bfloat16);

        ushort[] actual = MemoryMarshal.Cast<byte, ushort>(encoded).ToArray();
        ushort[] expected = [.. source.Select(ReferenceBFloat16)];
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void Bfloat16_ties_round_to_even_and_the_largest_floats_round_to_infinity_on_both_paths()
    {
        // (input bits, expected bfloat16 bits)
        (uint In, ushort Out)[] cases =
        [
            (0x3F80_8000, 0x3F80), // tie, even below: stays
            (0x3F81_8000, 0x3F82), // tie, odd below: rounds up to even
            (0x3F80_8001, 0x3F81), // just above the tie: up
            (0x3F80_7FFF, 0x3F80), // just below the tie: down
            (0xBF81_8000, 0xBF82), // negative tie, odd: away from zero to even
            (0x7F7F_FFFF, 0x7F80), // float.MaxValue: +Inf, as round-to-nearest-even gives
            (0xFF7F_FFFF, 0xFF80), // float.MinValue: -Inf
            (0x7F80_0000, 0x7F80), // +Inf stays
            (0xFF80_0000, 0xFF80), // -Inf stays
            (0x8000_0000, 0x8000), // -0 stays
            (0x0000_0001, 0x0000), // the smallest subnormal rounds to 0
        ];
        int[] offsets = [0, 16];
        foreach (int offset in offsets)
        {
            // 16 + cases.Length elements: at offset 0 the cases run through the SIMD block, at 16 through the tail.
            var source = new float[16 + cases.Length];
            for (int i = 0; i < cases.Length; i++) source[offset + i] = BitConverter.UInt32BitsToSingle(cases[i].In);
            byte[] encoded = new byte[source.Length * 2];

            ElementCodec.Encode(source, encoded, DType.Bfloat16);

            var bits = MemoryMarshal.Cast<byte, ushort>(encoded);
            for (int i = 0; i < cases.Length; i++)
                Assert.True(cases[i].Out == bits[offset + i],
                    $"0x{cases[i].In:X8} at element {offset + i} encoded as 0x{bits[offset + i]:X4}; expected 0x{cases[i].Out:X4}");
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Bfloat16_round_trips_within_2_to_the_minus_8_relative(int length)
    {
        float[] source = RandomFloats(new Random(200 + length), length, withSpecials: false);

        float[] decoded = RoundTrip(source, DType.Bfloat16, out byte[] encoded);

        Assert.Equal(length * 2, encoded.Length);
        for (int i = 0; i < length; i++)
        {
            double error = Math.Abs((double)decoded[i] - source[i]);
            Assert.True(error <= Math.Abs((double)source[i]) / 256,
                $"element {i}: {source[i]:R} came back as {decoded[i]:R}; expected within 2^-8 relative");
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Bfloat16_decodes_exactly_the_upper_half_of_a_float32(int length)
    {
        var random = new Random(300 + length);
        ushort[] halves = [.. Enumerable.Range(0, length).Select(_ => (ushort)random.Next(0x10000))];

        var decoded = new float[length];
        ElementCodec.Decode(MemoryMarshal.AsBytes(halves.AsSpan()), decoded, DType.Bfloat16);

        Assert.Equal([.. halves.Select(h => (uint)h << 16)], decoded.Select(BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [InlineData(0x7FC0_0000u)] // quiet NaN
    [InlineData(0xFFC0_0000u)] // negative quiet NaN
    [InlineData(0x7F80_0001u)] // signalling NaN: naive rounding would make it +Inf
    [InlineData(0x7FFF_FFFFu)] // rounding would carry into the sign bit
    [InlineData(0xFFFF_FFFFu)] // rounding would wrap to +0
    public void Nan_stays_nan_in_bfloat16_on_the_simd_path_and_on_the_tail(uint nanBits)
    {
        float nan = BitConverter.UInt32BitsToSingle(nanBits);
        var source = RandomFloats(new Random(4), 21, withSpecials: false);
        int[] nanAt = [0, 9, 15, 16, 20]; // 0..15: SIMD block; 16..20: scalar tail
        foreach (int i in nanAt) source[i] = nan;

        float[] decoded = RoundTrip(source, DType.Bfloat16, out _);

        for (int i = 0; i < source.Length; i++)
        {
            if (nanAt.Contains(i)) Assert.True(float.IsNaN(decoded[i]), $"NaN at element {i} came back as {decoded[i]:R}");
            else Assert.True(float.IsFinite(decoded[i]), $"finite element {i} came back as {decoded[i]:R}");
        }
    }

    [Fact]
    public void The_eight_lane_bfloat16_conversions_equal_the_span_codec_on_ties_nan_infinity_and_the_largest_floats()
    {
        var source = RandomFloats(new Random(8), 64, withSpecials: true);
        uint[] edges = [0x3F80_8000u, 0x3F81_8000u, 0x7F7F_FFFFu, 0xFF7F_FFFFu, 0x7F80_0001u, 0xFFFF_FFFFu, 0x7F80_0000u, 0x0000_0001u];
        for (int i = 0; i < edges.Length; i++) source[i] = BitConverter.UInt32BitsToSingle(edges[i]);
        var expected = new byte[source.Length * 2];
        ElementCodec.Encode(source, expected, DType.Bfloat16);
        var bits = MemoryMarshal.Cast<byte, ushort>(expected);

        for (int i = 0; i < source.Length; i += 8)
        {
            var lanes = ElementCodec.ToBFloat16(System.Runtime.Intrinsics.Vector256.Create(source.AsSpan(i, 8)));
            var back = ElementCodec.FromBFloat16(lanes);
            for (int lane = 0; lane < 8; lane++)
            {
                Assert.Equal(bits[i + lane], lanes[lane]);
                Assert.Equal(bits[i + lane], ElementCodec.ToBFloat16(source[i + lane]));
                Assert.Equal((uint)bits[i + lane] << 16, BitConverter.SingleToUInt32Bits(back[lane]));
                Assert.Equal((uint)bits[i + lane] << 16, BitConverter.SingleToUInt32Bits(ElementCodec.FromBFloat16(bits[i + lane])));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void Float16_round_trips_as_a_cast_to_half_and_back(int length)
    {
        float[] source = RandomFloats(new Random(400 + length), length, withSpecials: true);
        // Values around half's range: overflow to infinity, subnormals, underflow to zero.
        float[] halfRange = [70000f, -65520f, 65504f, 1e-5f, -6e-8f, 1e-9f, 0.1f, 1f / 3];
        for (int i = 0; i < Math.Min(length, halfRange.Length); i++) source[length - 1 - i] = halfRange[i];

        float[] decoded = RoundTrip(source, DType.Float16, out byte[] encoded);

        Assert.Equal(length * 2, encoded.Length);
        Assert.Equal(
            [.. source.Select(x => BitConverter.HalfToUInt16Bits((Half)x))],
            MemoryMarshal.Cast<byte, ushort>(encoded).ToArray());
        for (int i = 0; i < length; i++)
        {
            float expected = (float)(Half)source[i];
            Assert.True(
                BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(decoded[i]) || (float.IsNaN(expected) && float.IsNaN(decoded[i])),
                $"element {i}: {source[i]:R} came back as {decoded[i]:R}; expected {expected:R}");
        }
    }

    [Theory]
    [InlineData(DType.Float32, 4)]
    [InlineData(DType.Bfloat16, 2)]
    [InlineData(DType.Float16, 2)]
    public void Element_sizes_match_the_wire_types(DType dtype, int bytes)
    {
        Assert.Equal(bytes, ElementCodec.ElementBytes(dtype));
    }

    [Fact]
    public void An_unknown_dtype_is_refused_naming_dtype()
    {
        var unknown = (DType)7;

        var size = Assert.Throws<InvalidDataException>(() => ElementCodec.ElementBytes(unknown));
        var encode = Assert.Throws<InvalidDataException>(() => ElementCodec.Encode([1f], new byte[4], unknown));
        var decode = Assert.Throws<InvalidDataException>(() => ElementCodec.Decode(new byte[4], new float[1], unknown));

        Assert.StartsWith("dtype: 7 ", size.Message, StringComparison.Ordinal);
        Assert.StartsWith("dtype: 7 ", encode.Message, StringComparison.Ordinal);
        Assert.StartsWith("dtype: 7 ", decode.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("float32", DType.Float32)]
    [InlineData("", DType.Float32)]
    [InlineData("bfloat16", DType.Bfloat16)]
    [InlineData("float16", DType.Float16)]
    public void Parse_reads_the_wire_type_names(string name, DType expected)
    {
        Assert.Equal(expected, ElementCodec.Parse(name));
    }

    [Fact]
    public void Every_listed_name_parses()
    {
        Assert.Equal([DType.Float32, DType.Bfloat16, DType.Float16], ElementCodec.Names.Select(ElementCodec.Parse));
    }

    [Theory]
    [InlineData("fp16")]
    [InlineData("Float32")]
    [InlineData("int8")]
    [InlineData(" bfloat16")]
    public void Parse_refuses_an_unknown_name_naming_the_value(string name)
    {
        var error = Assert.Throws<ArgumentException>(() => ElementCodec.Parse(name));

        Assert.StartsWith($"wire-dtype: '{name}' is not a wire type", error.Message, StringComparison.Ordinal);
        Assert.Contains("float32, bfloat16 or float16", error.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Round to nearest, ties to even, on the dropped lower 16 bits (written as a comparison,
    /// not with the encoder's bias trick); NaN becomes the quiet NaN 0x7FC0.
    /// </summary>
    [Theory]
    [InlineData(DType.Float32)]
    [InlineData(DType.Bfloat16)]
    [InlineData(DType.Float16)]
    public void AllFinite_finds_a_nan_or_an_infinity_at_any_position_without_decoding(DType dtype)
    {
        // Every position of a 33-element vector: on the SIMD blocks and on the scalar tail.
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            for (int position = 0; position < 33; position++)
            {
                var random = new Random(position); // within float16's range
                float[] source = [.. Enumerable.Range(0, 33).Select(_ => (float)(random.NextDouble() * 2000 - 1000))];
                byte[] clean = new byte[33 * ElementCodec.ElementBytes(dtype)];
                ElementCodec.Encode(source, clean, dtype);
                Assert.True(ElementCodec.AllFinite(clean, dtype), $"{dtype}: finite values reported as not finite");
                source[position] = bad;
                byte[] encoded = new byte[clean.Length];
                ElementCodec.Encode(source, encoded, dtype);
                Assert.False(ElementCodec.AllFinite(encoded, dtype), $"{dtype}: {bad} at {position} not found");
            }
    }

    private static ushort ReferenceBFloat16(float value)
    {
        if (float.IsNaN(value)) return 0x7FC0;
        uint bits = BitConverter.SingleToUInt32Bits(value);
        uint upper = bits >> 16, lower = bits & 0xFFFF;
        if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1)) upper++;
        return (ushort)upper;
    }

    private static float[] RoundTrip(float[] source, DType dtype, out byte[] encoded)
    {
        encoded = new byte[source.Length * ElementCodec.ElementBytes(dtype)];
        ElementCodec.Encode(source, encoded, dtype);
        var decoded = new float[source.Length];
        ElementCodec.Decode(encoded, decoded, dtype);
        return decoded;
    }

    /// <summary>Values spread over many binades, both signs, with random low bits (so ties and near-ties occur).</summary>
    private static float[] RandomFloats(Random random, int length, bool withSpecials)
    {
        var values = new float[length];
        for (int i = 0; i < length; i++)
        {
            int exponent = random.Next(-30, 31);
            float value = (float)((random.NextDouble() + 0.5) * Math.Pow(2, exponent) * (random.Next(2) == 0 ? 1 : -1));
            // Now and then force the lower 16 bits to an exact tie.
            if (random.Next(8) == 0)
                value = BitConverter.UInt32BitsToSingle((BitConverter.SingleToUInt32Bits(value) & 0xFFFF_0000) | 0x8000);
            values[i] = value;
        }
        if (withSpecials)
        {
            float[] specials = [0f, -0f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue, float.PositiveInfinity, float.NegativeInfinity];
            for (int i = 0; i < Math.Min(length, specials.Length); i++) values[i * 7 % length] = specials[i];
        }
        return values;
    }

    private static uint[] Bits(float[] values) => [.. values.Select(BitConverter.SingleToUInt32Bits)];
}
