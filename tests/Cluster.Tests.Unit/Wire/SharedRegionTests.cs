using Cluster.Protos;
using Cluster.Shared.Wire;

namespace Cluster.Tests.Unit.Wire;

/// <summary>
/// <see cref="SharedRegion"/>: both ends see the same bytes, an exchange's chunks are placed one
/// after the other until the region is full, and the data port reads a chunk's data from the
/// region only where the frame's slice lies inside it. Regions are made in a temporary
/// directory (the kind of file system does not matter to a mapping; the servers use /dev/shm).
/// </summary>
[Trait("Tier", "unit")]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class SharedRegionTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("region-test-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void What_one_mapping_writes_the_other_reads_and_the_name_can_go_once_both_have_mapped()
    {
        var (server, name) = SharedRegion.Create(_directory, 4096);
        var client = SharedRegion.Open(_directory, name, 4096);
        try
        {
            SharedRegion.Unlink(_directory, name);
            Assert.Empty(Directory.GetFiles(_directory));
            var writer = client.StartExchange();
            Assert.Equal(new RegionSlice { Offset = 0, Bytes = 3 }, writer.TryPlace([1, 2, 3]));
            Assert.Equal(new RegionSlice { Offset = 3, Bytes = 2 }, writer.TryPlace([4, 5]));
            Assert.Equal(new byte[] { 1, 2, 3, 4, 5 }, server.Slice(new RegionSlice { Offset = 0, Bytes = 5 }).ToArray());
            // What does not fit is not placed (it goes through the socket); a new exchange starts at 0 again.
            Assert.Null(writer.TryPlace(new byte[4092]));
            Assert.Equal(new RegionSlice { Offset = 0, Bytes = 4096 }, server.StartExchange().TryPlace(new byte[4096]));
        }
        finally
        {
            client.Release();
            server.Release();
        }
    }

    [Fact]
    public void A_region_is_opened_only_by_its_own_name_size_and_file()
    {
        var (region, name) = SharedRegion.Create(_directory, 64);
        try
        {
            var badName = Assert.Throws<InvalidDataException>(() => SharedRegion.Open(_directory, "../etc/passwd", 64));
            Assert.Contains("name '../etc/passwd' is not a region's", badName.Message, StringComparison.Ordinal);
            var badSize = Assert.Throws<InvalidDataException>(() => SharedRegion.Open(_directory, name, 128));
            Assert.Contains("holds 64 bytes; expected 128", badSize.Message, StringComparison.Ordinal);
            Assert.Throws<FileNotFoundException>(() => SharedRegion.Open(_directory, "cluster-ps-1-" + new string('0', 32), 64));

            string link = "cluster-ps-2-" + new string('a', 32);
            File.CreateSymbolicLink(Path.Combine(_directory, link), Path.Combine(_directory, name));
            var linked = Assert.Throws<InvalidDataException>(() => SharedRegion.Open(_directory, link, 64));
            Assert.Contains("is a link; expected the region itself", linked.Message, StringComparison.Ordinal);
        }
        finally
        {
            region.Release();
        }
    }

    [Fact]
    public void Regions_left_by_processes_that_are_gone_are_removed_and_the_others_kept()
    {
        string hex = new('b', 32);
        string gone = Path.Combine(_directory, $"cluster-ps-{int.MaxValue}-{hex}");
        string running = Path.Combine(_directory, $"cluster-ps-{Environment.ProcessId}-{hex}");
        string other = Path.Combine(_directory, "cluster-ps-notes.txt");
        foreach (string path in new[] { gone, running, other }) File.WriteAllBytes(path, [1, 2, 3]);

        Assert.Equal(1, SharedRegion.RemoveStale(_directory));
        Assert.False(File.Exists(gone));
        Assert.True(File.Exists(running));
        Assert.True(File.Exists(other));
    }

    [Fact]
    public async Task A_chunk_is_read_from_the_region_into_place_and_a_slice_outside_it_is_refused_naming_it()
    {
        var (region, _) = SharedRegion.Create(_directory, 64);
        try
        {
            var buffers = new FrameBuffers { Region = region };
            float[] values = [1.5f, -2f, 3.25f];
            using var wire = new MemoryStream();
            var writer = region.StartExchange();
            await ParameterDataProtocol.WriteChunkAsync(wire, new TensorChunk { OffsetElements = 0 }, FloatMemory.AsBytes(values), CancellationToken.None, writer);
            // Only the frame went to the stream: its data lies in the region.
            Assert.True(wire.Length < 32, $"{wire.Length} bytes on the stream; expected only a header");
            wire.Position = 0;
            Assert.True(await DataFrames.ReadLengthsAsync(wire, buffers.Lengths, CancellationToken.None));
            var (frame, dataBytes) = await ParameterDataProtocol.ReadHeaderAsync(wire, buffers, CancellationToken.None);
            Assert.Equal(12, dataBytes);
            float[] destination = new float[3];
            long? received = await ParameterDataProtocol.ReadDenseDataAsync(wire, buffers, frame.Chunk, dataBytes, DType.Float32, destination, 0,
                CancellationToken.None);
            Assert.Equal(3, received);
            Assert.Equal(values, destination);

            var outside = await Assert.ThrowsAsync<InvalidDataException>(() =>
                ReadHeaderOfAsync(new DataFrame { Chunk = new TensorChunk(), Region = new RegionSlice { Offset = 60, Bytes = 8 } }, buffers));
            Assert.Contains("region slice at offset 60 of 8 bytes; expected inside the connection's 64-byte shared region", outside.Message, StringComparison.Ordinal);
            var noRegion = await Assert.ThrowsAsync<InvalidDataException>(() =>
                ReadHeaderOfAsync(new DataFrame { Chunk = new TensorChunk(), Region = new RegionSlice { Offset = 0, Bytes = 4 } }, new FrameBuffers()));
            Assert.Contains("this connection has no region", noRegion.Message, StringComparison.Ordinal);
            var notChunk = await Assert.ThrowsAsync<InvalidDataException>(() =>
                ReadHeaderOfAsync(new DataFrame { End = new DataEnd(), Region = new RegionSlice { Offset = 0, Bytes = 4 } }, buffers));
            Assert.Contains("region set on a End", notChunk.Message, StringComparison.Ordinal);
        }
        finally
        {
            region.Release();
        }
    }

    private static async Task ReadHeaderOfAsync(DataFrame frame, FrameBuffers buffers)
    {
        using var wire = new MemoryStream();
        await ParameterDataProtocol.WriteAsync(wire, frame, CancellationToken.None);
        wire.Position = 0;
        await DataFrames.ReadLengthsAsync(wire, buffers.Lengths, CancellationToken.None);
        await ParameterDataProtocol.ReadHeaderAsync(wire, buffers, CancellationToken.None);
    }
}
