using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Cluster.Bench.Suites;

/// <summary>The physical limit: raw TCP throughput over loopback, one sender and one receiver, 1 MiB writes.</summary>
public static class LoopbackSocket
{
    public static async Task<double> MeasureGigabytesPerSecondAsync(long totalBytes)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var accept = listener.AcceptTcpClientAsync();
        using var sender = new TcpClient();
        await sender.ConnectAsync(IPAddress.Loopback, port);
        using var receiver = await accept;

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
}
