using Cluster.Shared.Security;

namespace Cluster.Sdk.Distributed;

/// <summary>
/// Where a rank of a user's own training loop stands in the job, as `cluster launch` passes it
/// to every process it starts (environment variables <see cref="RankVariable"/> and the others).
/// </summary>
public sealed record DistributedOptions
{
    public const string RankVariable = "CLUSTER_RANK";
    public const string WorldSizeVariable = "CLUSTER_WORLD_SIZE";
    public const string JobIdVariable = "CLUSTER_JOB_ID";
    public const string CoordinatorVariable = "CLUSTER_COORDINATOR";
    public const string ParameterServersVariable = "CLUSTER_PARAMETER_SERVERS";

    /// <summary>This process's rank, 0 &lt;= Rank &lt; WorldSize.</summary>
    public required int Rank { get; init; }
    /// <summary>Processes whose gradients make one step.</summary>
    public required int WorldSize { get; init; }
    /// <summary>Names the job's state on the parameter servers; the same on every rank.</summary>
    public required string JobId { get; init; }
    /// <summary>gRPC address of the cluster's coordinator.</summary>
    public required string CoordinatorUrl { get; init; }
    /// <summary>gRPC addresses of the parameter servers the model is cut across.</summary>
    public required IReadOnlyList<string> ParameterServers { get; init; }
    /// <summary>The cluster secret (and TLS settings) every call carries.</summary>
    public required ClusterSecurity Security { get; init; }
    /// <summary>Deadline of a push or pull, which waits for the slowest rank of the step.</summary>
    public TimeSpan BarrierTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>How long ranks other than 0 wait for rank 0 to create the job on the servers.</summary>
    public TimeSpan BroadcastTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Reads the options `cluster launch` sets (CLUSTER_RANK, CLUSTER_WORLD_SIZE, CLUSTER_JOB_ID, CLUSTER_COORDINATOR, CLUSTER_PARAMETER_SERVERS, CLUSTER_SECRET).</summary>
    public static DistributedOptions FromEnvironment() => FromVariables(Environment.GetEnvironmentVariable);

    public static DistributedOptions FromVariables(Func<string, string?> variable)
    {
        string Read(string name) => variable(name) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException($"{name}: not set; expected the process to be started by `cluster launch`, which sets it");
        int ReadInt(string name, int min) => int.TryParse(Read(name), out int value) && value >= min
            ? value
            : throw new InvalidOperationException($"{name}: '{Read(name)}' is not a number >= {min}");
        var options = new DistributedOptions
        {
            Rank = ReadInt(RankVariable, 0),
            WorldSize = ReadInt(WorldSizeVariable, 1),
            JobId = Read(JobIdVariable),
            CoordinatorUrl = Read(CoordinatorVariable),
            ParameterServers = Read(ParameterServersVariable).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            Security = new ClusterSecurity { Secret = ClusterSecret.Parse(Read(ClusterSecret.EnvironmentVariable), ClusterSecret.EnvironmentVariable) },
        };
        if (options.Rank >= options.WorldSize)
            throw new InvalidOperationException($"{RankVariable}: {options.Rank} is out of range; expected 0 to {options.WorldSize - 1}");
        return options;
    }
}
