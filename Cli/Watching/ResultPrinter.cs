using System.Text.Json;
using Cluster.Cli.Api;
using Cluster.Coordinator.Api;
using Spectre.Console;

namespace Cluster.Cli.Watching;

/// <summary>Prints a finished job: a table for people, or one JSON document for scripts.</summary>
public static class ResultPrinter
{
    public static void PrintJson(JobView job) =>
        Console.Out.WriteLine(JsonSerializer.Serialize(job, CoordinatorApi.Json));

    public static void PrintTable(IAnsiConsole console, JobView job)
    {
        var table = new Table().Title($"{job.Id}: {job.Spec.Model} on {job.Spec.Dataset}, {job.Spec.Workers} worker(s), {job.State}");
        foreach (string column in new[] { "epoch", "train loss", "test loss", "accuracy", "precision", "recall", "F1", "samples/s" })
            table.AddColumn(new TableColumn(column).RightAligned());
        foreach (var e in job.Epochs)
            table.AddRow($"{e.Epoch + 1}", $"{e.TrainLoss:0.0000}", $"{e.TestLoss:0.0000}", $"{e.Accuracy:P2}", $"{e.Precision:0.0000}",
                $"{e.Recall:0.0000}", $"{e.F1:0.0000}", $"{e.SamplesPerSecond:#,0}");
        console.Write(table);
        if (job.Epochs.Count > 0)
        {
            var last = job.Epochs[^1];
            if (last.Perplexity is { } perplexity)
                console.MarkupLineInterpolated($"Validation loss [bold]{last.TestLoss:0.0000}[/] nats per character, perplexity [bold]{perplexity:0.00}[/] (next-character accuracy {last.Accuracy:P2})");
            else
                console.MarkupLineInterpolated($"Test accuracy [bold]{last.Accuracy:P2}[/] (macro precision {last.Precision:0.0000}, recall {last.Recall:0.0000}, F1 {last.F1:0.0000})");
        }
        if (job.Error is not null) console.MarkupLineInterpolated($"[red]{job.Error}[/]");
    }
}
