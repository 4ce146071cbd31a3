using Cluster.Shared.Jobs;

namespace Cluster.Tests.Unit.Jobs;

/// <summary>A job's sync mode and staleness: validated naming the field, and carried through the wire format.</summary>
[Trait("Tier", "unit")]
public sealed class SyncModeSpecificationTests
{
    [Theory]
    [InlineData("bsp", 0)]
    [InlineData("ssp", 0)]
    [InlineData("ssp", 3)]
    [InlineData("asp", 0)]
    public void A_known_mode_with_a_fitting_staleness_is_valid_and_round_trips(string sync, int staleness)
    {
        var spec = new JobSpecification { Sync = sync, Staleness = staleness };

        Assert.Empty(spec.Validate());
        var back = JobSpecification.FromProto(spec.ToProto(), spec.Workers);
        Assert.Equal((sync, staleness), (back.Sync, back.Staleness));
    }

    [Theory]
    [InlineData("bsp", 2, "staleness: 2 applies to sync 'ssp' only")]
    [InlineData("asp", 1, "staleness: 1 applies to sync 'ssp' only")]
    [InlineData("ssp", -1, "staleness: -1 is out of range; expected 0 to 1000")]
    [InlineData("ssp", 1001, "staleness: 1001 is out of range")]
    [InlineData("hogwild", 0, "sync: 'hogwild' is not supported; expected one of bsp, ssp, asp")]
    public void A_bad_mode_or_staleness_is_refused_naming_the_field(string sync, int staleness, string expected)
    {
        var errors = new JobSpecification { Sync = sync, Staleness = staleness }.Validate();

        Assert.Contains(errors, e => e.StartsWith(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void An_asynchronous_mode_needs_parameter_servers()
    {
        var errors = new JobSpecification { Sync = "asp", Scheme = "allreduce" }.Validate();

        Assert.Contains(errors, e => e.StartsWith("sync: 'asp' needs scheme 'ps'", StringComparison.Ordinal));
    }
}
