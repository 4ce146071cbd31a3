using Cluster.Shared.Security;

namespace Cluster.Coordinator;

/// <summary>Settings of the coordinator process, with units and defaults in one place.</summary>
public sealed record CoordinatorOptions
{
    /// <summary>Address to bind; loopback by default.</summary>
    public string BindAddress { get; init; } = "127.0.0.1";
    /// <summary>gRPC (HTTP/2) port for cluster members; 0 picks a free one.</summary>
    public int GrpcPort { get; init; }
    /// <summary>HTTP/1.1 port of the JSON API; 0 picks a free one.</summary>
    public int HttpPort { get; init; }
    /// <summary>The lease port (raw TCP; workers lease their shards on it); 0 picks a free one, -1 serves none (workers lease over gRPC).</summary>
    public int LeasePort { get; init; }
    /// <summary>How often workers send heartbeats.</summary>
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>Silence after which a worker is declared dead.</summary>
    public TimeSpan HeartbeatTimeout { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>The cluster secret and TLS settings; required (see SECURITY.md).</summary>
    public ClusterSecurity? Security { get; init; }
    /// <summary>Largest gRPC message the coordinator accepts from a member, in bytes.</summary>
    public int GrpcMessageBytesMax { get; init; } = ClusterTransport.MessageBytesMaxDefault;
    /// <summary>Largest request body of the JSON API, in bytes (a job spec is well under 1 KiB).</summary>
    public int ApiBodyBytesMax { get; init; } = 64 << 10;
    /// <summary>Jobs that may wait in the queue; further submissions are refused until some start.</summary>
    public int QueuedJobsMax { get; init; } = 256;
    /// <summary>Live workers that may be registered at once.</summary>
    public int WorkersMax { get; init; } = 4096;
    /// <summary>Scheme "allreduce": how long a ring re-formation waits for the previous members to rejoin.</summary>
    public TimeSpan RingJoinWindow { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>SQLite file holding the coordinator's state; a coordinator restarted on it resumes its jobs. Null: in memory only.</summary>
    public string? StatePath { get; init; }

    public IEnumerable<string> Validate()
    {
        if (!System.Net.IPAddress.TryParse(BindAddress, out _))
            yield return $"bind: '{BindAddress}' is not an IP address";
        if (GrpcPort is < 0 or > 65535) yield return $"port: {GrpcPort} is out of range; expected 0 to 65535";
        if (HttpPort is < 0 or > 65535) yield return $"http-port: {HttpPort} is out of range; expected 0 to 65535";
        if (LeasePort is < -1 or > 65535) yield return $"lease-port: {LeasePort} is out of range; expected -1 (none) or 0 to 65535";
        if (HeartbeatTimeout <= HeartbeatInterval * 2)
            yield return $"heartbeat-timeout: {HeartbeatTimeout.TotalSeconds} s; expected more than twice the heartbeat interval ({HeartbeatInterval.TotalSeconds} s)";
        if (Security is null) yield return "secret: none given; expected --secret, --secret-file or CLUSTER_SECRET";
        else foreach (string error in Security.ValidateServing(BindAddress)) yield return error;
        if (GrpcMessageBytesMax < 64 << 10) yield return $"grpc-message-bytes-max: {GrpcMessageBytesMax}; expected at least 65536";
        if (ApiBodyBytesMax < 1 << 10) yield return $"api-body-bytes-max: {ApiBodyBytesMax}; expected at least 1024";
        if (QueuedJobsMax < 1) yield return $"queued-jobs-max: {QueuedJobsMax}; expected 1 or more";
        if (WorkersMax < 1) yield return $"workers-max: {WorkersMax}; expected 1 or more";
        if (StatePath is { Length: 0 }) yield return "state: empty; expected a file path";
    }
}
