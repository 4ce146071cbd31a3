using System.Runtime.InteropServices;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Google.Protobuf;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="ChunkReader"/>: dense and sparse chunks decoded into place, strictly in element
/// order without gaps or repeats, every length, offset and index checked.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ChunkReaderTests
{
    private static float[] RandomFloats(int length, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1))];
    }

    private static byte[] Encode(float[] values, DType dtype)
    {
        var bytes = new byte[values.Length * ElementCodec.ElementBytes(dtype)];
        ElementCodec.Encode(values, bytes, dtype);
        return bytes;
    }

    private static TensorChunk Dense(long offset, params float[] values) =>
        new() { OffsetElements = offset, Data = ByteString.CopyFrom(MemoryMarshal.AsBytes(values.AsSpan())) };

    private static TensorChunk Sparse(long offset, long length, uint[] indices, float[] values, DType dtype = DType.Float32) => new()
    {
        OffsetElements = offset,
        LengthElements = length,
        Indices = ByteString.CopyFrom(MemoryMarshal.AsBytes(indices.AsSpan())),
        Data = ByteString.CopyFrom(Encode(values, dtype)),
    };

    [Theory]
    [InlineData(DType.Float32)]
    [InlineData(DType.Bfloat16)]
    [InlineData(DType.Float16)]
    public void Dense_chunks_in_order_reassemble_the_vector(DType dtype)
    {
        // More than one chunk of ChunkBytesMax for every dtype, with a short last chunk.
        const int length = 600_001;
        float[] source = RandomFloats(length, seed: 1);
        int elementBytes = ElementCodec.ElementBytes(dtype);
        var chunks = TensorWire.Chunks(Encode(source, dtype), elementBytes: elementBytes).ToList();
        Assert.True(chunks.Count >= 2, $"{chunks.Count} chunk(s); expected several");

        var destination = new float[length];
        long received = 0;
        foreach (var chunk in chunks) received = ChunkReader.ReadDense(chunk, dtype, destination, received);

        Assert.Equal(length, received);
        var expected = new float[length];
        ElementCodec.Decode(Encode(source, dtype), expected, dtype);
        Assert.True(expected.AsSpan().SequenceEqual(destination), "reassembled vector differs from the decoded source");
    }

    [Fact]
    public void Each_dense_chunk_lands_at_its_offset_and_returns_the_running_count()
    {
        var destination = new float[5];

        long afterFirst = ChunkReader.ReadDense(Dense(0, 1f, 2f), DType.Float32, destination, 0);
        long afterSecond = ChunkReader.ReadDense(Dense(2, 3f, 4f, 5f), DType.Float32, destination, afterFirst);

        Assert.Equal(2, afterFirst);
        Assert.Equal(5, afterSecond);
        Assert.Equal([1f, 2f, 3f, 4f, 5f], destination);
    }

    public static TheoryData<long[]> OutOfOrderOffsets() => new()
    {
        new long[] { 2 },       // the second chunk before the first
        new long[] { 0, 4 },    // gap
        new long[] { 0, 0 },    // repeat
        new long[] { 0, 1 },    // overlap
        new long[] { 0, 2, 0 }, // back to the start
        new long[] { -2 },
    };

    [Theory]
    [MemberData(nameof(OutOfOrderOffsets))]
    public void A_dense_chunk_out_of_order_with_a_gap_or_repeated_is_refused_naming_offset_elements(long[] offsets)
    {
        var destination = new float[8];
        long received = 0;
        for (int i = 0; i < offsets.Length - 1; i++)
            received = ChunkReader.ReadDense(Dense(offsets[i], 1f, 1f), DType.Float32, destination, received);

        long last = offsets[^1];
        var error = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadDense(Dense(last, 9f, 9f), DType.Float32, destination, received));

        Assert.StartsWith($"chunk.offset_elements: {last}; expected {received}", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(9f, destination);
    }

    [Fact]
    public void A_dense_chunk_running_past_the_end_is_refused_naming_offset_elements()
    {
        var destination = new float[4];
        long received = ChunkReader.ReadDense(Dense(0, 1f, 1f), DType.Float32, destination, 0);

        var error = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadDense(Dense(2, 9f, 9f, 9f), DType.Float32, destination, received));

        Assert.Equal("chunk.offset_elements: 2 with 3 elements runs outside the vector of 4 elements", error.Message);
        Assert.Equal([1f, 1f, 0f, 0f], destination);
    }

    [Theory]
    [InlineData(DType.Float32, 6)]
    [InlineData(DType.Bfloat16, 3)]
    [InlineData(DType.Float16, 1)]
    public void A_dense_chunk_of_a_partial_element_is_refused_naming_chunk_data(DType dtype, int bytes)
    {
        var chunk = new TensorChunk { Data = ByteString.CopyFrom(new byte[bytes]) };

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadDense(chunk, dtype, new float[16], 0));

        Assert.StartsWith($"chunk.data: {bytes} bytes is not a whole number of", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_dense_chunk_over_the_limit_is_refused_naming_chunk_data()
    {
        int bytes = TensorWire.ChunkBytesMax + 4;
        var chunk = new TensorChunk { Data = ByteString.CopyFrom(new byte[bytes]) };

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadDense(chunk, DType.Float32, new float[bytes], 0));

        Assert.StartsWith($"chunk.data: {bytes} bytes exceeds the chunk limit", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_dense_chunk_carrying_indices_is_refused_naming_chunk_indices()
    {
        var chunk = Dense(0, 1f);
        chunk.Indices = ByteString.CopyFrom(new byte[4]);

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadDense(chunk, DType.Float32, new float[4], 0));

        Assert.StartsWith("chunk.indices: present in a dense stream", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(DType.Float32)]
    [InlineData(DType.Bfloat16)]
    [InlineData(DType.Float16)]
    public void A_sparse_chunk_zero_fills_its_run_and_places_the_values(DType dtype)
    {
        float[] destination = [.. Enumerable.Repeat(7f, 12)]; // leftovers of an earlier step

        long afterFirst = ChunkReader.ReadSparse(Sparse(0, 5, [0, 3], [1.5f, -2f], dtype), dtype, destination, 0);
        long afterSecond = ChunkReader.ReadSparse(Sparse(5, 4, [3], [0.25f], dtype), dtype, destination, afterFirst);

        Assert.Equal(5, afterFirst);
        Assert.Equal(9, afterSecond);
        // Elements past the runs read so far are untouched.
        Assert.Equal([1.5f, 0f, 0f, -2f, 0f, 0f, 0f, 0f, 0.25f, 7f, 7f, 7f], destination);
    }

    [Fact]
    public void A_sparse_chunk_without_indices_zero_fills_its_whole_run()
    {
        float[] destination = [7f, 7f, 7f, 7f];

        long received = ChunkReader.ReadSparse(Sparse(0, 4, [], []), DType.Float32, destination, 0);

        Assert.Equal(4, received);
        Assert.Equal([0f, 0f, 0f, 0f], destination);
    }

    [Fact]
    public void Sparse_runs_reach_exactly_the_end_of_the_vector()
    {
        var destination = new float[6];

        long received = ChunkReader.ReadSparse(Sparse(0, 4, [1], [1f]), DType.Float32, destination, 0);
        received = ChunkReader.ReadSparse(Sparse(4, 2, [0, 1], [2f, 3f]), DType.Float32, destination, received);

        Assert.Equal(6, received);
        Assert.Equal([0f, 1f, 0f, 0f, 2f, 3f], destination);
    }

    [Theory]
    [InlineData(new uint[] { 2, 2 })]         // repeated
    [InlineData(new uint[] { 3, 1 })]         // decreasing
    [InlineData(new uint[] { 0, 4, 2 })]
    [InlineData(new uint[] { 8 })]            // one past the run
    [InlineData(new uint[] { 1, uint.MaxValue })]
    public void Sparse_indices_not_strictly_increasing_or_outside_the_run_are_refused_naming_chunk_indices(uint[] indices)
    {
        var destination = new float[16];
        float[] values = [.. indices.Select(_ => 1f)];

        var error = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadSparse(Sparse(0, 8, indices, values), DType.Float32, destination, 0));

        Assert.StartsWith("chunk.indices: index ", error.Message, StringComparison.Ordinal);
        Assert.Contains("within the run of 8 elements", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(DType.Float32, 2, 1)]
    [InlineData(DType.Float32, 1, 2)]
    [InlineData(DType.Bfloat16, 3, 2)]
    [InlineData(DType.Float16, 0, 1)]
    public void Sparse_indices_and_values_of_different_counts_are_refused_naming_chunk_indices(DType dtype, int indexCount, int valueCount)
    {
        var chunk = Sparse(0, 8, [.. Enumerable.Range(0, indexCount).Select(i => (uint)i)], [.. Enumerable.Repeat(1f, valueCount)], dtype);

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadSparse(chunk, dtype, new float[8], 0));

        Assert.StartsWith($"chunk.indices: {indexCount * 4} bytes of indices do not match", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Sparse_index_bytes_that_are_not_whole_uint32s_are_refused_naming_chunk_indices()
    {
        var chunk = new TensorChunk
        {
            LengthElements = 8,
            Indices = ByteString.CopyFrom(new byte[6]),
            Data = ByteString.CopyFrom(new byte[4]),
        };

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadSparse(chunk, DType.Float32, new float[8], 0));

        Assert.StartsWith("chunk.indices: 6 bytes of indices", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, 9)]              // one past the end from the start
    [InlineData(4, 5)]              // from the middle
    [InlineData(4, long.MaxValue)]
    [InlineData(0, 0)]              // empty run
    [InlineData(0, -1)]
    public void A_sparse_run_past_the_end_or_empty_is_refused_naming_length_elements(long received, long length)
    {
        var destination = new float[8];

        var error = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadSparse(Sparse(received, length, [], []), DType.Float32, destination, received));

        Assert.Equal(
            $"chunk.length_elements: {length} from offset {received} runs outside the vector of 8 elements", error.Message);
    }

    [Fact]
    public void A_sparse_chunk_out_of_order_is_refused_naming_offset_elements_and_writes_nothing()
    {
        float[] destination = [7f, 7f, 7f, 7f, 7f, 7f, 7f, 7f];
        long received = ChunkReader.ReadSparse(Sparse(0, 4, [0], [1f]), DType.Float32, destination, 0);

        var repeat = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadSparse(Sparse(0, 4, [1], [9f]), DType.Float32, destination, received));
        var gap = Assert.Throws<InvalidDataException>(
            () => ChunkReader.ReadSparse(Sparse(6, 2, [1], [9f]), DType.Float32, destination, received));

        Assert.StartsWith("chunk.offset_elements: 0; expected 4", repeat.Message, StringComparison.Ordinal);
        Assert.StartsWith("chunk.offset_elements: 6; expected 4", gap.Message, StringComparison.Ordinal);
        Assert.Equal([1f, 0f, 0f, 0f, 7f, 7f, 7f, 7f], destination);
    }

    [Fact]
    public void A_sparse_chunk_with_bad_indices_leaves_the_buffer_untouched()
    {
        // Regression: the run was cleared before the indices were checked.
        var destination = Enumerable.Repeat(7f, 4).ToArray();
        var chunk = Sparse(0, 4, [1, 1], [5f, 6f]);

        var error = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadSparse(chunk, DType.Float32, destination, 0));

        Assert.StartsWith("chunk.indices: index 1 at position 1", error.Message, StringComparison.Ordinal);
        Assert.Equal([7f, 7f, 7f, 7f], destination);
    }

    [Fact]
    public void Dense_chunks_kept_encoded_land_as_their_bytes_at_their_offsets_and_are_checked_as_dense_ones()
    {
        float[] values = RandomFloats(10, 8);
        byte[] bf16 = Encode(values, DType.Bfloat16);
        var elements = new byte[bf16.Length];
        TensorChunk Part(long offset, int count) =>
            new() { OffsetElements = offset, Data = ByteString.CopyFrom(bf16.AsSpan((int)offset * 2, count * 2)) };

        long received = ChunkReader.ReadDenseEncoded(Part(0, 4), DType.Bfloat16, elements, 0);
        received = ChunkReader.ReadDenseEncoded(Part(4, 6), DType.Bfloat16, elements, received);

        Assert.Equal(10, received);
        Assert.Equal(bf16, elements);
        var repeat = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadDenseEncoded(Part(4, 2), DType.Bfloat16, elements, 6));
        Assert.StartsWith("chunk.offset_elements: 4; expected 6", repeat.Message, StringComparison.Ordinal);
        var past = Assert.Throws<InvalidDataException>(() => ChunkReader.ReadDenseEncoded(Part(4, 6), DType.Bfloat16, elements.AsSpan(0, 18), 4));
        Assert.StartsWith("chunk.offset_elements: 4 with 6 elements runs outside the vector of 9 elements", past.Message, StringComparison.Ordinal);
    }
}
