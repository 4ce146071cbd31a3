using Cluster.Protos;
using Cluster.Shared.Wire;
using Google.Protobuf;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="TensorWire"/>: flat float32 buffers cut into chunks of at most
/// <see cref="TensorWire.ChunkBytesMax"/> and copied back into place with bounds checks.
/// </summary>
[Trait("Tier", "unit")]
public sealed class TensorWireTests
{
    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static TensorChunk Chunk(long offsetElements, int byteLength) =>
        new() { OffsetElements = offsetElements, Data = ByteString.CopyFrom(new byte[byteLength]) };

    [Fact]
    public void A_buffer_splits_into_chunks_of_the_sent_size_with_element_offsets()
    {
        // Two and a half sent chunks: two full ones and a half one.
        int sent = TensorWire.ChunkBytesSent;
        byte[] source = RandomBytes(5 * sent / 2, seed: 1);

        var chunks = TensorWire.Chunks(source).ToList();

        Assert.Equal(3, chunks.Count);
        Assert.Equal([0L, sent / 4, 2L * sent / 4], chunks.Select(c => c.OffsetElements));
        Assert.Equal([sent, sent, sent / 2], chunks.Select(c => c.Data.Length));
        Assert.All(chunks, c => Assert.True(c.Data.Length <= TensorWire.ChunkBytesMax));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Chunks_hold_whole_elements_and_count_offsets_from_the_first_element(int elementBytes)
    {
        int elements = TensorWire.ChunkBytesSent / elementBytes * 3 + 5;
        byte[] source = RandomBytes(elements * elementBytes, seed: 3);

        var chunks = TensorWire.Chunks(source, firstElement: 1000, elementBytes: elementBytes).ToList();

        Assert.Equal(4, chunks.Count);
        Assert.All(chunks, c => Assert.Equal(0, c.Data.Length % elementBytes));
        long expectedOffset = 1000;
        foreach (var chunk in chunks)
        {
            Assert.Equal(expectedOffset, chunk.OffsetElements);
            expectedOffset += chunk.Data.Length / elementBytes;
        }
        Assert.Equal(1000 + elements, expectedOffset);
        Assert.True(source.AsSpan().SequenceEqual(chunks.SelectMany(c => c.Data.ToByteArray()).ToArray()), "chunks do not concatenate to the source");
    }

    [Fact]
    public void Chunks_reassemble_bitwise_equal_in_any_order()
    {
        byte[] source = RandomBytes(5 * (1 << 19), seed: 2);
        var chunks = TensorWire.Chunks(source).ToList();

        var inOrder = new byte[source.Length];
        var reversed = new byte[source.Length];
        int elements = chunks.Sum(c => TensorWire.CopyChunk(c, inOrder));
        foreach (var chunk in Enumerable.Reverse(chunks)) TensorWire.CopyChunk(chunk, reversed);

        Assert.Equal(source.Length / sizeof(float), elements);
        Assert.True(source.AsSpan().SequenceEqual(inOrder), "in-order reassembly differs from the source");
        Assert.True(source.AsSpan().SequenceEqual(reversed), "reverse-order reassembly differs from the source");
    }

    [Fact]
    public void Chunks_wrap_the_buffer_without_copying()
    {
        byte[] source = new byte[16];
        var chunk = Assert.Single(TensorWire.Chunks(source));

        source[5] = 42;

        Assert.Equal(42, chunk.Data[5]);
    }

    [Fact]
    public void An_empty_buffer_gives_no_chunks()
    {
        Assert.Empty(TensorWire.Chunks(ReadOnlyMemory<byte>.Empty));
    }

    [Fact]
    public void A_chunk_reaching_exactly_the_end_is_accepted()
    {
        var destination = new byte[16];
        var chunk = new TensorChunk { OffsetElements = 2, Data = ByteString.CopyFrom([1, 2, 3, 4, 5, 6, 7, 8]) };

        int written = TensorWire.CopyChunk(chunk, destination);

        Assert.Equal(2, written);
        Assert.Equal([0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], destination);
    }

    [Theory]
    [InlineData(2, 3)]   // elements 2..4 of a 4-element vector
    [InlineData(4, 1)]   // starts just past the end
    [InlineData(1000, 1)]
    [InlineData(-1, 1)]
    [InlineData(long.MinValue, 1)]
    public void A_chunk_outside_the_destination_throws_naming_offset_elements(long offset, int elements)
    {
        var destination = new byte[16];

        var error = Assert.Throws<InvalidDataException>(() => TensorWire.CopyChunk(Chunk(offset, elements * 4), destination));

        Assert.Equal(
            $"chunk.offset_elements: {offset} with {elements} elements runs outside the vector of 4 elements", error.Message);
        Assert.All(destination, b => Assert.Equal(0, b));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(6)]
    [InlineData(15)]
    public void A_byte_length_not_a_multiple_of_four_throws_naming_chunk_data(int byteLength)
    {
        var error = Assert.Throws<InvalidDataException>(() => TensorWire.CopyChunk(Chunk(0, byteLength), new byte[64]));

        Assert.Equal($"chunk.data: {byteLength} bytes is not a whole number of float32 elements", error.Message);
    }

    [Fact]
    public void A_chunk_larger_than_the_limit_throws_naming_chunk_data()
    {
        int tooLarge = TensorWire.ChunkBytesMax + 4;

        var error = Assert.Throws<InvalidDataException>(() => TensorWire.CopyChunk(Chunk(0, tooLarge), new byte[2 * tooLarge]));

        Assert.Equal($"chunk.data: {tooLarge} bytes exceeds the chunk limit of {TensorWire.ChunkBytesMax} bytes", error.Message);
    }

    [Theory]
    [InlineData(long.MaxValue)]
    [InlineData(long.MaxValue - 1)]
    public void An_offset_near_long_max_is_refused_without_overflowing_the_bounds_check(long offset)
    {
        // Regression: offset + length once wrapped negative, passed the check and escaped as
        // ArgumentOutOfRangeException (Unknown on the wire instead of InvalidArgument).
        var destination = new byte[16];

        var error = Assert.Throws<InvalidDataException>(() => TensorWire.CopyChunk(Chunk(offset, 8), destination));

        Assert.StartsWith($"chunk.offset_elements: {offset} ", error.Message, StringComparison.Ordinal);
    }
}
