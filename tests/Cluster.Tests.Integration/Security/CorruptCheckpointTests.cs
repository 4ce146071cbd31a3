using Cluster.Coordinator;
using Cluster.Coordinator.Jobs;
using Cluster.ParameterServer;
using Cluster.Shared.Jobs;
using Cluster.Tests.Integration.Support;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Models;

namespace Cluster.Tests.Integration.Security;

/// <summary>A job asked to start from a corrupted checkpoint fails with a clear error; the file and the cluster are unharmed.</summary>
[Trait("Tier", "integration")]
public sealed class CorruptCheckpointTests
{
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(3);

    [Fact]
    public async Task A_corrupted_checkpoint_fails_its_job_clearly_and_the_next_job_trains()
    {
        string directory = Directory.CreateTempSubdirectory("corrupt-checkpoint-").FullName;
        string path = Path.Combine(directory, "mlp.safetensors");
        using (var model = ModelZoo.Create("mlp", seed: 1))
            SafeTensorsFile.Write(path, model.state_dict().Select(p => (p.Key, p.Value)));
        byte[] corrupted = File.ReadAllBytes(path);
        corrupted[^100] ^= 0x01;
        File.WriteAllBytes(path, corrupted);

        await using var coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        await using var server = await ParameterServerHost.StartAsync(
            new ParameterServerOptions { CoordinatorUrl = coordinator.GrpcUrl, Security = TestSecurity.Loopback }, CancellationToken.None);
        using var worker = ClusterCommand.Start("worker", "--coordinator", coordinator.GrpcUrl, "--threads", "1");
        var small = new JobSpecification { Model = "mlp", Workers = 1, Epochs = 1, TrainLimit = 1280, TestLimit = 500, Device = "cpu" };

        var bad = coordinator.Board.Submit(small with { InitFrom = path });
        var (badState, badError) = await WaitForEndAsync(coordinator, bad.Id);

        Assert.Equal(JobState.Failed, badState);
        Assert.Contains($"{path}: checksum mismatch", badError, StringComparison.Ordinal);
        Assert.Equal(corrupted, File.ReadAllBytes(path));

        var good = coordinator.Board.Submit(small);
        var (goodState, goodError) = await WaitForEndAsync(coordinator, good.Id);
        Assert.True(goodState == JobState.Succeeded, $"{goodState}: {goodError}\n{worker.Stderr}");
        Assert.Null(server.Store.Find(bad.Id)); // the failed job's parameters were released
        Directory.Delete(directory, recursive: true);
    }

    private static async Task<(JobState State, string? Error)> WaitForEndAsync(CoordinatorHost coordinator, string jobId)
    {
        var giveUpAt = DateTime.UtcNow + JobTimeout;
        while (DateTime.UtcNow < giveUpAt)
        {
            var (state, error, finished) = coordinator.Board.Read((jobs, _) => (jobs[jobId].State, jobs[jobId].Error, jobs[jobId].IsFinished));
            if (finished) return (state, error);
            await Task.Delay(200);
        }
        Assert.Fail($"job {jobId} did not end within {JobTimeout.TotalSeconds:0} s");
        return default;
    }
}
