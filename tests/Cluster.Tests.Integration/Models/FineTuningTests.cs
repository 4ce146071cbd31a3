using Cluster.Worker.Checkpoints;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Models;

/// <summary>
/// Fine-tuning on a real local cluster: a job saves a safetensors checkpoint; a second job
/// starts from it with most layers frozen and trains for a single step. It must score what the
/// checkpoint scored (it starts from it), far above the same single step from scratch, and its
/// frozen layers must come out bit-identical.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class FineTuningTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("finetune-e2e-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task A_fine_tune_starts_from_the_checkpoints_accuracy_not_from_scratch()
    {
        string pretrained = Path.Combine(_directory, "pretrained.safetensors");
        string tuned = Path.Combine(_directory, "tuned.safetensors");
        string[] data = ["--model", "mlp", "--dataset", "fashion-mnist", "--test-limit", "2000", "--seed", "4"];
        // One step: 2 workers x 64 samples.
        string[] oneStep = ["--epochs", "1", "--train-limit", "128", "--batch-size", "64", "--lr", "1e-4"];

        var pretraining = await ModelZooTrainingTests.TrainAsync(output, [.. data, "--epochs", "1", "--train-limit", "6000", "--save-to", pretrained]);
        var fineTune = await ModelZooTrainingTests.TrainAsync(output, [.. data, .. oneStep, "--init-from", pretrained, "--freeze", "fc1,fc2", "--save-to", tuned]);
        var scratch = await ModelZooTrainingTests.TrainAsync(output, [.. data, .. oneStep]);

        double checkpointAccuracy = pretraining[^1].GetProperty("accuracy").GetDouble();
        double fineTuneAccuracy = fineTune[0].GetProperty("accuracy").GetDouble();
        double scratchAccuracy = scratch[0].GetProperty("accuracy").GetDouble();
        output.WriteLine($"checkpoint {checkpointAccuracy:P2}, fine-tune after 1 step {fineTuneAccuracy:P2}, scratch after 1 step {scratchAccuracy:P2}");
        Assert.True(checkpointAccuracy > 0.7, $"the pretraining reached only {checkpointAccuracy:P2}");
        Assert.True(Math.Abs(fineTuneAccuracy - checkpointAccuracy) <= 0.02,
            $"fine-tune after one step scored {fineTuneAccuracy:P2}, the checkpoint {checkpointAccuracy:P2}: it did not start from the checkpoint");
        Assert.True(scratchAccuracy < checkpointAccuracy - 0.15, $"one step from scratch already scored {scratchAccuracy:P2}; the test cannot tell the two apart");

        var before = SafeTensorsFile.Read(pretrained);
        var after = SafeTensorsFile.Read(tuned);
        foreach (string frozen in new[] { "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias" })
            Assert.Equal(before[frozen].Data, after[frozen].Data);
        Assert.NotEqual(before["fc3.weight"].Data, after["fc3.weight"].Data);
    }
}
