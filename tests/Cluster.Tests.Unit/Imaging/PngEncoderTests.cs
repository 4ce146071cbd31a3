using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Cluster.Worker.Imaging;

namespace Cluster.Tests.Unit.Imaging;

[Trait("Tier", "unit")]
public sealed class PngEncoderTests
{
    [Fact]
    public void Crc32_matches_the_standard_check_value() =>
        Assert.Equal(0xCBF43926u, PngEncoder.Crc32(Encoding.ASCII.GetBytes("123456789")));

    [Fact]
    public void A_gray_image_round_trips_through_ihdr_and_zlib_idat()
    {
        const int width = 5, height = 3;
        byte[] pixels = [.. Enumerable.Range(0, width * height).Select(i => (byte)(i * 17))];

        byte[] png = PngEncoder.EncodeGray(pixels, width, height);

        Assert.Equal("\x89PNG\r\n\x1a\n", Encoding.Latin1.GetString(png, 0, 8));
        Assert.Equal("IHDR", Encoding.ASCII.GetString(png, 12, 4));
        Assert.Equal(width, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));
        Assert.Equal(height, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)));
        int idatLength = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(33));
        Assert.Equal("IDAT", Encoding.ASCII.GetString(png, 37, 4));
        using var zlib = new ZLibStream(new MemoryStream(png, 41, idatLength), CompressionMode.Decompress);
        using var raw = new MemoryStream();
        zlib.CopyTo(raw);
        byte[] rows = raw.ToArray();
        Assert.Equal((width + 1) * height, rows.Length);
        for (int y = 0; y < height; y++)
        {
            Assert.Equal(0, rows[y * (width + 1)]);
            Assert.Equal(pixels[(y * width)..((y + 1) * width)], rows[(y * (width + 1) + 1)..((y + 1) * (width + 1))]);
        }
        Assert.Equal("IEND", Encoding.ASCII.GetString(png, png.Length - 8, 4));
    }

    [Fact]
    public void Pixels_that_do_not_fill_the_image_are_refused() =>
        Assert.Contains("do not form a 4 x 4 image", Assert.Throws<ArgumentException>(() => PngEncoder.EncodeGray(new byte[15], 4, 4)).Message);
}
