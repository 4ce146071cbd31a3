using Cluster.Sdk.Distributed;

namespace Cluster.Tests.Unit.Sdk;

/// <summary>What `cluster launch` hands a rank through its environment, and the errors when it is not there.</summary>
[Trait("Tier", "unit")]
public sealed class DistributedOptionsTests
{
    private static Dictionary<string, string?> Launched() => new()
    {
        ["CLUSTER_RANK"] = "1",
        ["CLUSTER_WORLD_SIZE"] = "2",
        ["CLUSTER_JOB_ID"] = "launch-1",
        ["CLUSTER_COORDINATOR"] = "http://127.0.0.1:5000",
        ["CLUSTER_PARAMETER_SERVERS"] = "http://127.0.0.1:5001, http://127.0.0.1:5002",
        ["CLUSTER_SECRET"] = new string('s', 32),
    };

    [Fact]
    public void The_launchers_variables_give_rank_world_size_and_servers()
    {
        var variables = Launched();
        var options = DistributedOptions.FromVariables(name => variables.GetValueOrDefault(name));

        Assert.Equal((1, 2, "launch-1", "http://127.0.0.1:5000"), (options.Rank, options.WorldSize, options.JobId, options.CoordinatorUrl));
        Assert.Equal(["http://127.0.0.1:5001", "http://127.0.0.1:5002"], options.ParameterServers);
        Assert.Equal(new string('s', 32), options.Security.Secret.Value);
    }

    [Fact]
    public void A_missing_variable_says_who_sets_it()
    {
        var variables = Launched();
        variables.Remove("CLUSTER_PARAMETER_SERVERS");
        Assert.StartsWith("CLUSTER_PARAMETER_SERVERS: not set; expected the process to be started by `cluster launch`",
            Assert.Throws<InvalidOperationException>(() => DistributedOptions.FromVariables(name => variables.GetValueOrDefault(name))).Message);
    }

    [Fact]
    public void A_rank_outside_the_world_is_refused()
    {
        var variables = Launched();
        variables["CLUSTER_RANK"] = "2";
        Assert.StartsWith("CLUSTER_RANK: 2 is out of range; expected 0 to 1",
            Assert.Throws<InvalidOperationException>(() => DistributedOptions.FromVariables(name => variables.GetValueOrDefault(name))).Message);
    }
}
