using Cluster.Worker.Training;

namespace Cluster.Tests.Unit.Training;

/// <summary><see cref="OpenMpSpin"/>: the C environment libgomp reads gets the worker's spin count, a user's choice wins.</summary>
[Trait("Tier", "unit")]
public sealed class OpenMpSpinTests
{
    [Fact]
    public void A_worker_process_gets_a_short_spin_unless_its_user_chose_one()
    {
        if (!OperatingSystem.IsLinux()) return;
        string? before = OpenMpSpin.NativeValue(OpenMpSpin.Variable);
        bool userChose = before is not null || OpenMpSpin.NativeValue("OMP_WAIT_POLICY") is not null;

        OpenMpSpin.ApplyToProcess();
        OpenMpSpin.ApplyToProcess();

        string? after = OpenMpSpin.NativeValue(OpenMpSpin.Variable);
        Assert.Equal(userChose ? before : OpenMpSpin.WorkerValue, after);
        if (!userChose) Assert.Equal(OpenMpSpin.WorkerValue, Environment.GetEnvironmentVariable(OpenMpSpin.Variable));
    }
}
