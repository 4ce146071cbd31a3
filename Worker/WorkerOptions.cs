using Cluster.Shared.Security;

namespace Cluster.Worker;

/// <summary>Settings of one worker process, with their units and defaults in one place.</summary>
public sealed record WorkerOptions
{
    /// <summary>gRPC address of the coordinator.</summary>
    public required string CoordinatorUrl { get; init; }
    /// <summary>Device to train on; null: what the job asks for.</summary>
    public string? Device { get; init; }
    /// <summary>libtorch intra-op threads; 0: libtorch's default.</summary>
    public int Threads { get; init; }
    /// <summary>How long to keep trying to reach the coordinator at start.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>How long the coordinator may stay silent before the worker gives up.</summary>
    public TimeSpan CoordinatorLostTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Deadline of one plain RPC.</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Deadline of a push or pull, which waits for the slowest worker of the step.</summary>
    public TimeSpan BarrierTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>Exit after one job instead of waiting for the next.</summary>
    public bool SingleJob { get; init; }
    /// <summary>The cluster secret and TLS settings; required (see SECURITY.md).</summary>
    public ClusterSecurity? Security { get; init; }
    /// <summary>Address of the HTTP listener for /metrics and /timeline.</summary>
    public string HttpBindAddress { get; init; } = "127.0.0.1";
    /// <summary>Port of the HTTP listener; 0 picks a free one (the coordinator learns it at registration).</summary>
    public int HttpPort { get; init; }
    /// <summary>Directory for TensorBoard event files (DIR/JOB/rank-R); null: none.</summary>
    public string? TensorBoardDirectory { get; init; }
    /// <summary>Test-only fault injection: extra milliseconds added to the compute phase of every step.</summary>
    public int SlowStepMillis { get; init; }
    /// <summary>Test-only fault injection: at this global step (once), this worker's gradient gets a NaN; -1: never.</summary>
    public long NanGradientStep { get; init; } = -1;
    /// <summary>How long a lost parameter server may take to come back (restarted from its checkpoint) before the job fails.</summary>
    public TimeSpan ServerRecoveryTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Times one job may resynchronise with restarted parameter servers before it fails.</summary>
    public int ServerRecoveriesMax { get; init; } = 5;
    /// <summary>Scheme "allreduce": address the RingPeer service binds.</summary>
    public string PeerBindAddress { get; init; } = "127.0.0.1";
    /// <summary>Scheme "allreduce": port of the RingPeer service; 0 picks a free one.</summary>
    public int PeerPort { get; init; }
    /// <summary>Scheme "allreduce": host name peers use to reach this worker; null: the bound address.</summary>
    public string? PeerAdvertiseHost { get; init; }
    /// <summary>Scheme "allreduce": longest silence of a ring neighbour before the ring is re-formed.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Scheme "allreduce": directory to write each job's final parameters to (raw float32); null: none.</summary>
    public string? ParametersOutDirectory { get; init; }

    /// <summary>Where the dataset comes from: this machine's copy, the coordinator's data service, or the first that has it.</summary>
    public Data.DataSource DataSource { get; init; } = Data.DataSource.Auto;
    /// <summary>Cache of datasets fetched from the coordinator; null: <see cref="Data.DatasetFetcher.DefaultCacheDirectory"/>.</summary>
    public string? CacheDirectory { get; init; }

    /// <summary>Scheme "allreduce": how ring segments travel between neighbours.</summary>
    public AllReduce.RingTransport RingTransport { get; init; } = AllReduce.RingTransport.Tcp;

    /// <summary>Scheme "ps": how pushes and pulls travel to the parameter servers.</summary>
    public Training.ParameterServerTransport ParameterServerTransport { get; init; } = Training.ParameterServerTransport.Shm;

    public IEnumerable<string> Validate()
    {
        if (!Uri.TryCreate(CoordinatorUrl, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            yield return $"coordinator: '{CoordinatorUrl}' is not an address; expected http://HOST:PORT or https://HOST:PORT";
        if (Device is not null && !Shared.Jobs.DeviceNames.IsValid(Device))
            yield return $"device: '{Device}' is not a device; expected auto, cpu, cuda or cuda:N";
        if (Security is null) yield return "secret: none given; expected --secret, --secret-file or CLUSTER_SECRET";
        if (!System.Net.IPAddress.TryParse(HttpBindAddress, out _))
            yield return $"http-bind: '{HttpBindAddress}' is not an IP address";
        if (HttpPort is < 0 or > 65535)
            yield return $"http-port: {HttpPort} is out of range; expected 0 to 65535";
        if (SlowStepMillis < 0)
            yield return $"slow-step-ms: {SlowStepMillis} is out of range; expected 0 or more";
        if (!System.Net.IPAddress.TryParse(PeerBindAddress, out _))
            yield return $"peer-bind: '{PeerBindAddress}' is not an IP address";
        if (PeerPort is < 0 or > 65535)
            yield return $"peer-port: {PeerPort} is out of range; expected 0 to 65535";
        if (PeerTimeout <= TimeSpan.Zero)
            yield return $"peer-timeout: {PeerTimeout.TotalSeconds} s; expected more than 0";
        if (Threads < 0)
            yield return $"threads: {Threads} is out of range; expected 0 (default) or more";
    }
}
