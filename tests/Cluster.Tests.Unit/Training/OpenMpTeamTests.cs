using Cluster.Worker.Training;

namespace Cluster.Tests.Unit.Training;

/// <summary><see cref="OpenMpTeam"/>: a compute thread whose libtorch threads cover every core runs pinned, one thread to a core.</summary>
[Trait("Tier", "unit")]
public sealed class OpenMpTeamTests
{
    [Fact]
    public async Task A_team_that_covers_every_core_is_pinned_one_thread_to_a_core_and_a_smaller_one_is_left_alone()
    {
        if (!OperatingSystem.IsLinux()) return;
        int cores = OpenMpTeam.AllowedCpus().Count;

        using (var small = new ComputeThread(threads: 1, pinToCores: true))
        {
            Assert.Null(await small.Pinned);
            List<int> allowed = [];
            await small.RunAsync(() => { allowed = OpenMpTeam.AllowedCpus(); return Task.CompletedTask; });
            Assert.Equal(cores, allowed.Count);
        }

        using var whole = new ComputeThread(threads: cores, pinToCores: true);
        string? pinned = await whole.Pinned;
        List<int> own = [];
        await whole.RunAsync(() => { own = OpenMpTeam.AllowedCpus(); return Task.CompletedTask; });
        if (cores < 2)
        {
            Assert.Null(pinned); // no team to pin
            return;
        }
        Assert.StartsWith("compute thread on CPU ", pinned);
        Assert.Single(own);
        Assert.Contains($"CPU {own[0]},", pinned);
    }
}
