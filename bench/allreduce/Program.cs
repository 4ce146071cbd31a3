using System.Diagnostics;
using System.Globalization;
using Cluster.Protos;
using Cluster.Worker.AllReduce;
using Cluster.Shared.Security;
using Grpc.Net.Client;

// Ring all-reduce between W processes on loopback, with the worker's own classes.
//   driver: `bench WORLD SIZE_MB ITERATIONS` starts WORLD member processes, hands them each
//           other's addresses, and prints rank 0's median and best time per all-reduce.
//   member: `bench member RANK WORLD SIZE_MB ITERATIONS` (started by the driver).
if (args.Length > 0 && args[0] == "member") return await Member.RunAsync(args[1..]);
return await Driver.RunAsync(args);

internal static class Driver
{
    public static async Task<int> RunAsync(string[] args)
    {
        int world = int.Parse(args[0], CultureInfo.InvariantCulture);
        string sizeMb = args[1], iterations = args[2];
        var members = Enumerable.Range(0, world).Select(rank => Start(["member", rank.ToString(CultureInfo.InvariantCulture), args[0], sizeMb, iterations])).ToList();
        try
        {
            var addresses = new List<string>();
            foreach (var member in members) addresses.Add((await ReadLineAsync(member, "ADDRESS ")).Trim());
            foreach (var member in members) await member.StandardInput.WriteLineAsync(string.Join(' ', addresses));
            string result = await ReadLineAsync(members[0], "RESULT ");
            foreach (var member in members) await member.WaitForExitAsync();
            Console.WriteLine($"ring world={world} size_mb={sizeMb} {result}");
            return members.All(m => m.ExitCode == 0) ? 0 : 1;
        }
        finally
        {
            foreach (var member in members) if (!member.HasExited) member.Kill();
        }
    }

    private static readonly ClusterSecret RunSecret = ClusterSecret.Generate();

    private static Process Start(string[] arguments)
    {
        var start = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.Environment[ClusterSecret.EnvironmentVariable] = RunSecret.Value;
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") start.ArgumentList.Add(typeof(Driver).Assembly.Location);
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        return Process.Start(start)!;
    }

    private static async Task<string> ReadLineAsync(Process process, string prefix)
    {
        while (await process.StandardOutput.ReadLineAsync() is { } line)
            if (line.StartsWith(prefix, StringComparison.Ordinal)) return line[prefix.Length..];
        throw new InvalidOperationException($"member exited without '{prefix}'");
    }
}

internal static class Member
{
    // The members of one benchmark run share the secret their parent generated (CLUSTER_SECRET).
    private static readonly ClusterSecurity Security = new()
    {
        Secret = ClusterSecret.Resolve(null, null, Environment.GetEnvironmentVariable(ClusterSecret.EnvironmentVariable)) ?? ClusterSecret.Generate(),
    };

    public static async Task<int> RunAsync(string[] args)
    {
        int rank = int.Parse(args[0], CultureInfo.InvariantCulture), world = int.Parse(args[1], CultureInfo.InvariantCulture);
        int bytes = (int)(double.Parse(args[2], CultureInfo.InvariantCulture) * 1_000_000) / 4 * 4;
        int iterations = int.Parse(args[3], CultureInfo.InvariantCulture);
        await using var host = await PeerHost.StartAsync("127.0.0.1", 0, null, Security, default);
        Console.WriteLine($"ADDRESS {host.Address}|{host.Data.Address}");
        string[] addresses = Console.ReadLine()!.Split(' ');

        // RING_TRANSPORT=grpc measures the RingPeer.Stream path; the default is the ring data port (raw TCP), as workers use.
        string[] predecessor = addresses[(rank + world - 1) % world].Split('|');
        using var channel = GrpcChannel.ForAddress(predecessor[0], new GrpcChannelOptions
        {
            HttpHandler = ClusterTransport.Handler(Security, sockets => sockets.InitialHttp2StreamWindowSize = 16 << 20),
            MaxReceiveMessageSize = 8 << 20,
        });
        await using IRingConnection link = Environment.GetEnvironmentVariable("RING_TRANSPORT") == "grpc"
            ? await GrpcRingLink.OpenAsync(host.Inbox, channel, predecessor[0], "bench", 1, rank, (rank + 1) % world, TimeSpan.FromSeconds(60), default)
            : await SocketRingLink.OpenAsync(host.Data, Security, predecessor[1], "bench", 1, rank, (rank + 1) % world, TimeSpan.FromSeconds(60), default);
        int chunkBytes = int.TryParse(Environment.GetEnvironmentVariable("RING_CHUNK_BYTES"), out int c) ? c : Cluster.Shared.Wire.TensorWire.ChunkBytesMax;
        var ring = new RingAllReduce(rank, world, Cluster.Shared.Jobs.JobSpecification.BucketBytesDefault, chunkBytes);
        var vector = new byte[bytes];
        new Random(rank).NextBytes(vector.AsSpan(0, Math.Min(bytes, 4096)));
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(vector.AsSpan()).Fill(rank + 1);
        var barrier = new byte[sizeof(float)];

        var times = new List<double>();
        for (int i = 0; i < iterations + 2; i++)
        {
            await ring.ReduceAsync(link, 2 * i, barrier, 1, default); // a one-element all-reduce as a barrier
            var clock = Stopwatch.StartNew();
            await ring.ReduceAsync(link, 2 * i + 1, vector, 1, default);
            if (i >= 2) times.Add(clock.Elapsed.TotalMilliseconds); // two warm-up rounds
        }
        times.Sort();
        if (rank == 0) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT median_ms={times[times.Count / 2]:F1} best_ms={times[0]:F1}"));
        await ring.ReduceAsync(link, -1, barrier, 1, default);
        return 0;
    }
}
