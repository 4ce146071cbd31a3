using System.Text.Json;

namespace Cluster.Bench.Suites;

/// <summary>
/// Where a 1-worker cluster's step goes, from the job's timeline (`cluster local --timeline`):
/// medians over the second epoch of rank 0's spans. "Between steps" is the rest of the step's
/// period: writing the pulled parameters into the model and taking the next shard lease (asked
/// during the wait for the update once the servers say the step's pushes are all in, or here
/// when they do not).
/// </summary>
public sealed record StepPhases(double ComputeMs, double PushMs, double WaitMs, double PullMs, double BetweenMs, double PeriodMs)
{
    /// <summary>The phases of rank 0's steps from <paramref name="firstStep"/> on (each with the next step's start after it).</summary>
    public static StepPhases FromTimeline(string path, long firstStep)
    {
        using var trace = JsonDocument.Parse(File.ReadAllText(path));
        var events = trace.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        // The worker's process (the parameter server's spans carry the rank too).
        var workers = events.Where(e => e.GetProperty("name").GetString() == "process_name"
            && e.GetProperty("args").GetProperty("name").GetString() is { } name
            && name.StartsWith("worker", StringComparison.Ordinal) && name.EndsWith("(rank 0)", StringComparison.Ordinal)).ToList();
        if (workers.Count != 1)
            throw new InvalidDataException($"{path}: {workers.Count} processes named \"worker… (rank 0)\"; expected one, the 1-worker job's");
        int worker = workers[0].GetProperty("pid").GetInt32();
        var spans = new Dictionary<long, Dictionary<string, (long Start, long Duration)>>();
        foreach (var e in events)
        {
            if (e.GetProperty("ph").GetString() != "X" || e.GetProperty("pid").GetInt32() != worker || e.GetProperty("cat").GetString() != "step") continue;
            if (!e.TryGetProperty("args", out var args) || !args.TryGetProperty("step", out var stepValue)) continue;
            long step = stepValue.GetInt64();
            if (!spans.TryGetValue(step, out var phases)) spans[step] = phases = [];
            phases[e.GetProperty("name").GetString()!] = (e.GetProperty("ts").GetInt64(), e.GetProperty("dur").GetInt64());
        }
        string[] names = ["compute", "push", "wait", "pull"];
        var rows = new List<double[]>();
        foreach (var (step, phases) in spans)
        {
            if (step < firstStep || !names.All(phases.ContainsKey) || !spans.TryGetValue(step + 1, out var next) || !next.TryGetValue("compute", out var nextCompute)) continue;
            var pull = phases["pull"];
            rows.Add([.. names.Select(n => phases[n].Duration / 1000.0), (nextCompute.Start - pull.Start - pull.Duration) / 1000.0,
                (nextCompute.Start - phases["compute"].Start) / 1000.0]);
        }
        if (rows.Count == 0) throw new InvalidDataException($"{path}: no complete step of rank 0 from step {firstStep} on");
        double Median(int column)
        {
            var sorted = rows.Select(r => r[column]).Order().ToList();
            return sorted[sorted.Count / 2];
        }
        return new StepPhases(Median(0), Median(1), Median(2), Median(3), Median(4), Median(5));
    }
}
