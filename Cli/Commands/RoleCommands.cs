using System.CommandLine;
using Cluster.Cli.Local;
using Cluster.Coordinator;
using Cluster.ParameterServer;
using Cluster.Worker;
using Microsoft.Extensions.Logging;

namespace Cluster.Cli.Commands;

/// <summary>`cluster coordinator`, `cluster ps` and `cluster worker`: one role in this process.</summary>
public static class RoleCommands
{
    private static readonly Option<int?> ParentPid = new("--parent-pid") { Description = "Exit when this process is gone (set by `cluster local`)", Hidden = true };
    private static readonly Option<string> Bind = new("--bind") { Description = "Address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
    private static readonly Option<int> Port = new("--port") { Description = "gRPC port (0: any free port)", DefaultValueFactory = _ => 0 };
    private static readonly Option<string> CoordinatorUrl = new("--coordinator") { Description = "Coordinator's gRPC address, e.g. http://10.0.0.1:5000", Required = true };
    private static readonly SecurityOptions Security = new();
    private static readonly Option<double> ConnectTimeout = new("--connect-timeout") { Description = "Seconds to keep trying to reach the coordinator", DefaultValueFactory = _ => 15.0 };

    public static Command Coordinator()
    {
        var httpPort = new Option<int>("--http-port") { Description = "JSON API port (0: any free port)", DefaultValueFactory = _ => 0 };
        var leasePort = new Option<int>("--lease-port")
        {
            Description = "Lease port: raw TCP on which workers lease their shards, on the gRPC port's host (0: any free port; -1: none, workers lease over gRPC)",
            DefaultValueFactory = _ => 0,
        };
        var heartbeatTimeout = new Option<double>("--heartbeat-timeout") { Description = "Seconds of silence after which a worker is dead", DefaultValueFactory = _ => 15.0 };
        var queuedMax = new Option<int>("--queued-jobs-max") { Description = "Jobs that may wait in the queue", DefaultValueFactory = _ => new CoordinatorOptions().QueuedJobsMax };
        var ringJoinWindow = new Option<double>("--ring-join-window") { Description = "Scheme allreduce: seconds a ring re-formation waits for the previous members", DefaultValueFactory = _ => 10.0 };
        var state = new Option<string?>("--state")
        {
            Description = "SQLite file for the coordinator's state (jobs, members, leases, progress; created when missing); a coordinator restarted on the same file resumes its jobs. Default: in memory only",
        };
        var command = new Command("coordinator", "Run the coordinator: membership, job queue, shards and the JSON API") { Bind, Port, httpPort, leasePort, heartbeatTimeout, queuedMax, ringJoinWindow, state, ParentPid };
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            WatchParent(parse);
            var options = new CoordinatorOptions
            {
                BindAddress = parse.GetValue(Bind)!, GrpcPort = parse.GetValue(Port), HttpPort = parse.GetValue(httpPort), LeasePort = parse.GetValue(leasePort),
                HeartbeatTimeout = TimeSpan.FromSeconds(parse.GetValue(heartbeatTimeout)),
                QueuedJobsMax = parse.GetValue(queuedMax), Security = Security.Read(parse),
                RingJoinWindow = TimeSpan.FromSeconds(parse.GetValue(ringJoinWindow)), StatePath = parse.GetValue(state),
            };
            await using var host = await CoordinatorHost.StartAsync(options, cancellationToken);
            await Ready($"grpc={host.GrpcUrl} http={host.HttpUrl}{(host.LeasePortNumber is { } lease ? $" lease={lease}" : "")}");
            await host.WaitForShutdownAsync(cancellationToken);
            return 0;
        });
        return command;
    }

    public static Command ParameterServer()
    {
        var advertise = new Option<string?>("--advertise") { Description = "URL workers use to reach this server (default: the bound address)" };
        var modelBytesMax = new Option<long>("--model-bytes-max") { Description = "Largest model one job may hold on this server, in bytes", DefaultValueFactory = _ => new ParameterServerOptions().ModelBytesMax };
        var httpPort = new Option<int>("--http-port") { Description = "Port of the HTTP side (/metrics, /timeline, /stats; 0: any free port)", DefaultValueFactory = _ => 0 };
        var dataPort = new Option<int>("--data-port") { Description = "Port of the data port (raw TCP for pushes and pulls; 0: any free port)", DefaultValueFactory = _ => 0 };
        var checkpointDir = new Option<string?>("--checkpoint-dir") { Description = "Checkpoint jobs under this folder, and load the newest valid checkpoint of each at start" };
        var checkpointSteps = new Option<int>("--checkpoint-steps") { Description = "Checkpoint every N steps (0: not by steps)", DefaultValueFactory = _ => 0 };
        var checkpointSeconds = new Option<double>("--checkpoint-seconds") { Description = "Checkpoint at the first step T seconds after the last checkpoint (0: not by time)", DefaultValueFactory = _ => 0 };
        var command = new Command("ps", "Run a parameter server")
        {
            CoordinatorUrl, Bind, Port, advertise, httpPort, ConnectTimeout, modelBytesMax, checkpointDir, checkpointSteps, checkpointSeconds, ParentPid,
            dataPort,
        };
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            WatchParent(parse);
            var options = new ParameterServerOptions
            {
                CoordinatorUrl = parse.GetValue(CoordinatorUrl), BindAddress = parse.GetValue(Bind)!, Port = parse.GetValue(Port),
                AdvertiseUrl = parse.GetValue(advertise), ConnectTimeout = TimeSpan.FromSeconds(parse.GetValue(ConnectTimeout)),
                ModelBytesMax = parse.GetValue(modelBytesMax), Security = Security.Read(parse),
                HttpPort = parse.GetValue(httpPort), DataPort = parse.GetValue(dataPort),
                Checkpoints = new Cluster.ParameterServer.Checkpoints.CheckpointOptions
                {
                    Directory = parse.GetValue(checkpointDir) is { } dir ? Path.GetFullPath(dir) : null,
                    EverySteps = parse.GetValue(checkpointSteps), Every = TimeSpan.FromSeconds(parse.GetValue(checkpointSeconds)),
                },
            };
            await using var host = await ParameterServerHost.StartAsync(options, cancellationToken);
            await Ready($"grpc={host.Url} http={host.HttpUrl} data={host.DataUrl}");
            await host.WaitForShutdownAsync(cancellationToken);
            return 0;
        });
        return command;
    }

    /// <summary>--data-source for workers (and `cluster local`, which hands it to its workers).</summary>
    public static Option<Cluster.Worker.Data.DataSource> DataSourceOption() => new("--data-source")
    {
        Description = "Where workers take the dataset from: auto (their own copy if they have one, else the coordinator's), local, or coordinator (streamed from the coordinator, checksummed, cached)",
        DefaultValueFactory = _ => Cluster.Worker.Data.DataSource.Auto,
    };

    /// <summary>--ring-transport for workers (and `cluster local`).</summary>
    public static Option<Cluster.Worker.AllReduce.RingTransport> RingTransportOption() => new("--ring-transport")
    {
        Description = "Scheme allreduce: how gradient segments travel between ring neighbours: tcp (the ring data port, TLS when certificates are given) or grpc",
        DefaultValueFactory = _ => Cluster.Worker.AllReduce.RingTransport.Tcp,
    };

    /// <summary>--ps-transport for workers (and `cluster local`).</summary>
    public static Option<Cluster.Worker.Training.ParameterServerTransport> PsTransportOption() => new("--ps-transport")
    {
        Description = "Scheme ps: how pushes and pulls travel to the parameter servers: tcp (their data ports, TLS when certificates are given), "
            + "shm (the data ports, with the chunks' data through shared memory for a server on the same host; tcp for the others) or grpc",
        DefaultValueFactory = _ => Cluster.Worker.Training.ParameterServerTransport.Shm,
    };

    public static Command Worker()
    {
        var device = new Option<string?>("--device") { Description = "auto, cpu, cuda or cuda:N (default: what the job asks for)" };
        var threads = new Option<int>("--threads") { Description = "libtorch threads (0: libtorch's default)", DefaultValueFactory = _ => 0 };
        var once = new Option<bool>("--once") { Description = "Exit after one job instead of waiting for the next" };
        var httpBind = new Option<string>("--http-bind") { Description = "Address of the worker's HTTP listener (/metrics, /timeline)", DefaultValueFactory = _ => "127.0.0.1" };
        var httpPort = new Option<int>("--http-port") { Description = "Port of the worker's HTTP listener (0: any free port)", DefaultValueFactory = _ => 0 };
        var tensorBoard = new Option<string?>("--tensorboard") { Description = "Write TensorBoard event files of each job to DIR/JOB/rank-R" };
        var slowStep = new Option<int>("--slow-step-ms") { Description = "Test-only fault injection: add this many milliseconds to every step's compute", Hidden = true };
        var nanAtStep = new Option<long>("--nan-at-step") { Description = "Test-only fault injection: push a NaN gradient at this step", Hidden = true, DefaultValueFactory = _ => -1 };
        var peerBind = new Option<string>("--peer-bind") { Description = "Scheme allreduce: address the peer (ring) service listens on", DefaultValueFactory = _ => "127.0.0.1" };
        var peerPort = new Option<int>("--peer-port") { Description = "Scheme allreduce: peer service port (0: any free port)", DefaultValueFactory = _ => 0 };
        var peerAdvertise = new Option<string?>("--peer-advertise") { Description = "Scheme allreduce: host name other workers use to reach this one (default: the bound address)" };
        var peerTimeout = new Option<double>("--peer-timeout") { Description = "Scheme allreduce: seconds of silence from a ring neighbour before the ring is re-formed", DefaultValueFactory = _ => 30.0 };
        var dataSource = DataSourceOption();
        var ringTransport = RingTransportOption();
        var psTransport = PsTransportOption();
        var cacheDir = new Option<string?>("--cache-dir") { Description = "Where datasets fetched from the coordinator are kept (default: $CLUSTER_CACHE_DIR, else ~/.cache/cluster)" };
        var parametersOut = new Option<string?>("--parameters-out") { Description = "Scheme allreduce: write each job's final parameters (raw float32) to this directory", Hidden = true };
        var command = new Command("worker", "Run a worker: trains the jobs the coordinator assigns")
        {
            CoordinatorUrl, device, threads, once, ConnectTimeout, httpBind, httpPort, tensorBoard, slowStep, nanAtStep,
            peerBind, peerPort, peerAdvertise, peerTimeout, parametersOut, dataSource, cacheDir, ringTransport, psTransport, ParentPid,
        };
        Security.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            WatchParent(parse);
            // Before anything loads libtorch (and with it libgomp, which reads this once).
            Cluster.Worker.Training.OpenMpSpin.ApplyToProcess();
            var options = new WorkerOptions
            {
                CoordinatorUrl = parse.GetValue(CoordinatorUrl)!, Device = parse.GetValue(device), Threads = parse.GetValue(threads), SingleJob = parse.GetValue(once),
                ConnectTimeout = TimeSpan.FromSeconds(parse.GetValue(ConnectTimeout)), Security = Security.Read(parse),
                HttpBindAddress = parse.GetValue(httpBind)!, HttpPort = parse.GetValue(httpPort), SlowStepMillis = parse.GetValue(slowStep),
                NanGradientStep = parse.GetValue(nanAtStep),
                TensorBoardDirectory = parse.GetValue(tensorBoard) is { } dir ? Path.GetFullPath(dir) : null,
                PeerBindAddress = parse.GetValue(peerBind)!, PeerPort = parse.GetValue(peerPort), PeerAdvertiseHost = parse.GetValue(peerAdvertise),
                PeerTimeout = TimeSpan.FromSeconds(parse.GetValue(peerTimeout)), ParametersOutDirectory = parse.GetValue(parametersOut),
                DataSource = parse.GetValue(dataSource), RingTransport = parse.GetValue(ringTransport),
                ParameterServerTransport = parse.GetValue(psTransport),
                CacheDirectory = parse.GetValue(cacheDir) is { } cache ? Path.GetFullPath(cache) : Cluster.Worker.Data.DatasetFetcher.DefaultCacheDirectory(),
            };
            var errors = options.Validate().ToList();
            if (errors.Count > 0) throw new Api.CliException(string.Join(Environment.NewLine, errors), exitCode: 2);
            using var logging = LoggerFactory.Create(b => b.AddSimpleConsole(o => { o.SingleLine = true; o.IncludeScopes = true; o.TimestampFormat = "HH:mm:ss "; }));
            await new WorkerHost(options, logging).RunAsync(cancellationToken);
            return 0;
        });
        return command;
    }

    private static void WatchParent(ParseResult parse)
    {
        if (parse.GetValue(ParentPid) is { } pid) ParentWatch.Start(pid);
    }

    private static async Task Ready(string addresses)
    {
        await Console.Out.WriteLineAsync($"{RoleProcess.ReadyMarker} {addresses}");
        await Console.Out.FlushAsync();
    }
}
