using System.Buffers.Binary;
using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="LeasePortProtocol"/>: frames written are read back as they were, several on one
/// stream, a reply larger than the reader's first buffer included; a frame against the rules
/// (too long, carrying data, not a LeasePortFrame, cut short) is refused naming what it was.
/// </summary>
[Trait("Tier", "unit")]
public sealed class LeasePortProtocolTests
{
    private static byte[] Lengths(int headerBytes, int dataBytes)
    {
        byte[] lengths = new byte[8];
        BinaryPrimitives.WriteInt32LittleEndian(lengths, headerBytes);
        BinaryPrimitives.WriteInt32LittleEndian(lengths.AsSpan(4), dataBytes);
        return lengths;
    }

    [Fact]
    public async Task Frames_are_read_back_in_order_and_the_buffer_grows_for_a_large_reply()
    {
        var request = new LeasePortFrame { Request = new LeaseShardRequest { JobId = "job-1", Rank = 3, Step = 41, Applied = new AppliedSteps() } };
        request.Request.Applied.Steps.Add(new AppliedStep { Step = 40, Ranks = { 0, 1, 3 } });
        var reply = new LeasePortFrame { Reply = new LeaseShardReply { Kind = LeaseShardReply.Types.Kind.Shard, Epoch = 2 } };
        reply.Reply.SampleIndices.AddRange(Enumerable.Range(0, 65_536).Select(i => i * 7 % 60_000)); // the largest batch: far above 4 KiB
        var refusal = new LeasePortFrame { Refusal = new LeaseRefusal { StatusCode = 9, Detail = "step: 5 was already applied" } };

        using var stream = new MemoryStream();
        foreach (var frame in new[] { request, reply, refusal }) await LeasePortProtocol.WriteAsync(stream, frame, CancellationToken.None);
        stream.Position = 0;
        var reader = new LeasePortProtocol.Reader(stream);
        Assert.Equal(request, await reader.ReadAsync(CancellationToken.None));
        Assert.Equal(reply, await reader.ReadAsync(CancellationToken.None));
        Assert.Equal(refusal, await reader.ReadAsync(CancellationToken.None));
        Assert.Null(await reader.ReadAsync(CancellationToken.None));
    }

    [Theory]
    [InlineData(LeasePortProtocol.FrameBytesMax + 1, 0, "a 1048577-byte header and 0 bytes of data; expected at most 1048576 and 0")]
    [InlineData(-1, 0, "a -1-byte header")]
    [InlineData(10, 4, "a 10-byte header and 4 bytes of data")]
    public async Task A_frame_of_the_wrong_size_is_refused_before_it_is_read(int headerBytes, int dataBytes, string expected)
    {
        using var stream = new MemoryStream(Lengths(headerBytes, dataBytes));
        var refused = await Assert.ThrowsAsync<InvalidDataException>(() => new LeasePortProtocol.Reader(stream).ReadAsync(CancellationToken.None));
        Assert.Contains(expected, refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bytes_that_are_not_a_LeasePortFrame_are_refused_and_a_frame_cut_short_ends_the_stream()
    {
        using (var garbage = new MemoryStream([.. Lengths(3, 0), 0xFF, 0xFF, 0xFF]))
        {
            var refused = await Assert.ThrowsAsync<InvalidDataException>(() => new LeasePortProtocol.Reader(garbage).ReadAsync(CancellationToken.None));
            Assert.StartsWith("lease frame: not a LeasePortFrame", refused.Message, StringComparison.Ordinal);
        }
        using var cut = new MemoryStream([.. Lengths(100, 0), 1, 2, 3]);
        await Assert.ThrowsAsync<EndOfStreamException>(() => new LeasePortProtocol.Reader(cut).ReadAsync(CancellationToken.None));
    }
}
