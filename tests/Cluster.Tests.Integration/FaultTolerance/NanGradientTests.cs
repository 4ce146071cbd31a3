using System.Runtime.InteropServices;
using System.Text.Json;
using Cluster.Shared.Checkpoints;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.FaultTolerance;

/// <summary>
/// A worker that pushes a NaN gradient (test-only fault injection at one step): the servers
/// refuse it, the step goes on with the other rank's gradient, the model stays finite and trains,
/// and the job's JSON reports the refusal.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class NanGradientTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("nan-gradient-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task A_nan_gradient_is_refused_never_applied_and_reported_in_the_jobs_json()
    {
        string model = Path.Combine(_directory, "mlp.safetensors");

        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(3),
            "local", "--model", "mlp", "--workers", "2", "--epochs", "1", "--train-limit", "4000", "--test-limit", "1000",
            "--nan-gradient-at-step", "5", "--save-to", model, "--output", "json");

        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var job = JsonDocument.Parse(stdout);
        Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
        // One gradient refused: worker 0's push of step 5 (its NaN lies in the first partition only).
        Assert.Equal(1, job.RootElement.GetProperty("rejectedGradients").GetInt64());
        Assert.InRange(job.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble(), 0.7, 1.0);
        foreach (var (name, entry) in SafeTensors.Read(model))
            Assert.True(MemoryMarshal.Cast<byte, float>(entry.Data).ToArray().All(float.IsFinite), $"{name} holds NaN or Inf");
    }
}
