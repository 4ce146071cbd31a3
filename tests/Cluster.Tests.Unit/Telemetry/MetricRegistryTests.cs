using Cluster.Shared.Telemetry;

namespace Cluster.Tests.Unit.Telemetry;

[Trait("Tier", "unit")]
public sealed class MetricRegistryTests
{
    [Fact]
    public void A_histogram_is_written_with_cumulative_buckets_sum_and_count()
    {
        var registry = new MetricRegistry();
        var phases = registry.Histogram("step_seconds", "Step phases", [0.01, 0.1, 1], "phase");
        var compute = phases.WithLabels("compute");
        foreach (double seconds in new[] { 0.005, 0.05, 0.05, 0.5, 7 }) compute.Observe(seconds);

        string text = registry.Scrape();

        Assert.Equal(
            "# HELP step_seconds Step phases\n# TYPE step_seconds histogram\n" +
            "step_seconds_bucket{phase=\"compute\",le=\"0.01\"} 1\n" +
            "step_seconds_bucket{phase=\"compute\",le=\"0.1\"} 3\n" +
            "step_seconds_bucket{phase=\"compute\",le=\"1\"} 4\n" +
            "step_seconds_bucket{phase=\"compute\",le=\"+Inf\"} 5\n" +
            "step_seconds_sum{phase=\"compute\"} 7.605\n" +
            "step_seconds_count{phase=\"compute\"} 5\n", text);
    }

    [Fact]
    public void Label_values_are_escaped_and_gauges_are_refreshed_before_each_scrape()
    {
        var registry = new MetricRegistry();
        var jobs = registry.Gauge("jobs", "Jobs", "job");
        int scrapes = 0;
        registry.BeforeScrape(() =>
        {
            jobs.Clear();
            jobs.WithLabels("a\"b\\c\nd").Set(++scrapes);
        });

        registry.Scrape();
        string text = registry.Scrape();

        Assert.Contains("jobs{job=\"a\\\"b\\\\c\\nd\"} 2\n", text, StringComparison.Ordinal);
        Assert.Single(text.Split('\n'), l => l.StartsWith("jobs{", StringComparison.Ordinal));
    }

    [Fact]
    public void Counters_add_up_across_threads()
    {
        var registry = new MetricRegistry();
        var counter = registry.Counter("bytes_total", "Bytes").WithLabels();

        Parallel.For(0, 8, _ => { for (int i = 0; i < 10_000; i++) counter.Increment(0.5); });

        Assert.Equal(40_000, counter.Value);
        Assert.Contains("bytes_total 40000\n", registry.Scrape(), StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_names_and_duplicate_metrics_are_refused()
    {
        var registry = new MetricRegistry();
        registry.Counter("ok_total", "Fine");

        Assert.Throws<ArgumentException>(() => registry.Counter("ok_total", "Again"));
        Assert.Throws<ArgumentException>(() => registry.Gauge("9lives", "Starts with a digit"));
        Assert.Throws<ArgumentException>(() => registry.Gauge("has-dash", "Dash"));
        Assert.Throws<ArgumentException>(() => registry.Histogram("h", "Unordered", [1, 0.5]));
    }
}
