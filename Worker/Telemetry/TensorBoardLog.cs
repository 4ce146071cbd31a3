using Cluster.Protos;
using TorchSharp;

namespace Cluster.Worker.Telemetry;

/// <summary>
/// TensorBoard event files for a job, when the worker was started with --tensorboard DIR:
/// each rank writes DIR/JOB/rank-R/events.out.tfevents.* with its training loss, throughput
/// and step phases per progress report, and its test loss and accuracy per epoch
/// (TorchSharp's SummaryWriter). `tensorboard --logdir DIR` shows them.
/// </summary>
public sealed class TensorBoardLog
{
    private readonly TorchSharp.Modules.SummaryWriter _writer;

    private TensorBoardLog(TorchSharp.Modules.SummaryWriter writer) => _writer = writer;

    /// <summary>A log for the job's rank, or null when TensorBoard output was not asked for.</summary>
    public static TensorBoardLog? For(string? directory, string jobId, int rank)
    {
        if (string.IsNullOrEmpty(directory)) return null;
        string path = Path.Combine(directory, jobId, $"rank-{rank}");
        Directory.CreateDirectory(path);
        return new TensorBoardLog(torch.utils.tensorboard.SummaryWriter(path, createRunName: false));
    }

    public void Progress(ReportProgressRequest report, long globalStep)
    {
        int step = (int)Math.Min(globalStep, int.MaxValue);
        if (report.SampleCount > 0) _writer.add_scalar("train/loss", (float)(report.LossSum / report.SampleCount), step);
        if (report.TimedSteps == 0) return;
        float steps = report.TimedSteps;
        _writer.add_scalar("step/compute_ms", report.ComputeMicros / 1000f / steps, step);
        _writer.add_scalar("step/push_ms", report.PushMicros / 1000f / steps, step);
        _writer.add_scalar("step/wait_ms", report.WaitMicros / 1000f / steps, step);
        _writer.add_scalar("step/pull_ms", report.PullMicros / 1000f / steps, step);
    }

    /// <summary>This rank's evaluation of its test slice at the end of an epoch.</summary>
    public void Evaluation(int epoch, double testLoss, double accuracy)
    {
        _writer.add_scalar("test/loss", (float)testLoss, epoch + 1);
        _writer.add_scalar("test/accuracy", (float)accuracy, epoch + 1);
    }
}
