using System.Text;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// Seeded random inputs: every case derives from one seed, and a failing case reports the
/// seed and case number so that it replays exactly.
/// </summary>
public static class Fuzz
{
    /// <summary>Runs <paramref name="body"/> for <paramref name="cases"/> cases; a failure names its seed and case.</summary>
    public static void Run(int seed, int cases, Action<Random, int> body)
    {
        for (int i = 0; i < cases; i++)
        {
            var random = new Random(unchecked(seed * 1_000_003 + i));
            try { body(random, i); }
            catch (Exception e)
            {
                throw new Xunit.Sdk.XunitException($"fuzz case {i} of seed {seed} failed: {e.GetType().Name}: {e.Message}\n{e}");
            }
        }
    }

    /// <summary>The input with 1 to 8 random edits: flipped bits, changed, inserted, deleted, duplicated or truncated bytes.</summary>
    public static byte[] Mutate(Random random, byte[] input)
    {
        var bytes = new List<byte>(input);
        int edits = random.Next(1, 9);
        for (int e = 0; e < edits; e++)
        {
            int at = bytes.Count == 0 ? 0 : random.Next(bytes.Count);
            switch (random.Next(7))
            {
                case 0 when bytes.Count > 0: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                case 1 when bytes.Count > 0: bytes[at] = Interesting[random.Next(Interesting.Length)]; break;
                case 2: bytes.Insert(at, (byte)random.Next(256)); break;
                case 3 when bytes.Count > 0: bytes.RemoveAt(at); break;
                case 4 when bytes.Count > 0: bytes.RemoveRange(at, bytes.Count - at); break;
                case 5 when bytes.Count > 0:
                    int length = Math.Min(random.Next(1, 16), bytes.Count - at);
                    bytes.InsertRange(at, bytes.GetRange(at, length));
                    break;
                default: if (bytes.Count > 0) bytes[at] = (byte)random.Next(256); break;
            }
        }
        return [.. bytes];
    }

    private static readonly byte[] Interesting = [0x00, 0x01, 0x7F, 0x80, 0xFF, (byte)'"', (byte)'{', (byte)'}', (byte)'[', (byte)']', (byte)',', (byte)':', (byte)'-', (byte)'e', (byte)'9', (byte)'\\'];

    public static byte[] RandomBytes(Random random, int maxLength)
    {
        var bytes = new byte[random.Next(maxLength + 1)];
        random.NextBytes(bytes);
        return bytes;
    }

    public static string RandomString(Random random, int maxLength)
    {
        var text = new StringBuilder();
        int length = random.Next(maxLength + 1);
        for (int i = 0; i < length; i++)
            text.Append(random.Next(4) == 0 ? (char)random.Next(0x20, 0x3000) : (char)random.Next(0x20, 0x7F));
        return text.ToString();
    }
}
