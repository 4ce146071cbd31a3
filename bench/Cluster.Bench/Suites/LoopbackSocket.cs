using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Cluster.Bench.Suites;

/// <summary>
/// The physical limits over loopback: raw TCP throughput (one sender and one receiver, 1 MiB
/// writes), and the round trip of a small message between two tasks awaiting .NET sockets, the
/// least any request and its answer cost here.
/// </summary>
public static class LoopbackSocket
{
    public static async Task<double> MeasureGigabytesPerSecondAsync(long totalBytes)
    {
        using var pair = await ConnectPairAsync();
        var (sender, receiver) = (pair.Client, pair.Server);

        var block = new byte[1 << 20];
        var watch = Stopwatch.StartNew();
        var receive = Task.Run(async () =>
        {
            var buffer = new byte[1 << 20];
            var stream = receiver.GetStream();
            long received = 0;
            while (received < totalBytes)
            {
                int n = await stream.ReadAsync(buffer);
                if (n == 0) break;
                received += n;
            }
            return received;
        });
        var output = sender.GetStream();
        for (long sent = 0; sent < totalBytes; sent += block.Length)
            await output.WriteAsync(block.AsMemory(0, (int)Math.Min(block.Length, totalBytes - sent)));
        long total = await receive;
        return total / watch.Elapsed.TotalSeconds / 1e9;
    }

    /// <summary>Median microseconds for an 8-byte message to go over and come back (<paramref name="roundTrips"/> after a warm-up).</summary>
    public static async Task<double> MeasureRoundTripMicrosecondsAsync(int roundTrips)
    {
        using var pair = await ConnectPairAsync();
        var (client, server) = (pair.Client, pair.Server);
        client.NoDelay = server.NoDelay = true;
        const int warmup = 200;
        var echo = Task.Run(async () =>
        {
            var stream = server.GetStream();
            var message = new byte[8];
            for (int i = 0; i < warmup + roundTrips; i++)
            {
                await stream.ReadExactlyAsync(message);
                await stream.WriteAsync(message);
            }
        });
        var output = client.GetStream();
        var buffer = new byte[8];
        var micros = new List<double>(roundTrips);
        for (int i = 0; i < warmup + roundTrips; i++)
        {
            long started = Stopwatch.GetTimestamp();
            await output.WriteAsync(buffer);
            await output.ReadExactlyAsync(buffer);
            if (i >= warmup) micros.Add(Stopwatch.GetElapsedTime(started).TotalMicroseconds);
        }
        await echo;
        micros.Sort();
        return micros[micros.Count / 2];
    }

    private static async Task<Pair> ConnectPairAsync()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var accept = listener.AcceptTcpClientAsync();
        var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, port);
        return new Pair(client, await accept);
    }

    /// <summary>Both ends of one loopback connection.</summary>
    private sealed record Pair(TcpClient Client, TcpClient Server) : IDisposable
    {
        public void Dispose()
        {
            Client.Dispose();
            Server.Dispose();
        }
    }
}
