using System.Collections.Concurrent;
using System.Globalization;
using System.Text;

namespace Cluster.Shared.Telemetry;

/// <summary>
/// A role's Prometheus metrics, written in the text exposition format (version 0.0.4) at
/// scrape time. Children (one per label set) are resolved once, outside hot paths, so that
/// recording a value is a few interlocked operations with no allocation.
/// </summary>
public sealed class MetricRegistry
{
    private readonly List<MetricFamily> _families = [];
    private readonly List<Action> _beforeScrape = [];
    private readonly object _scrapeGate = new();

    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    public Counter Counter(string name, string help, params string[] labelNames) => Add(new Counter(name, help, labelNames));

    public Gauge Gauge(string name, string help, params string[] labelNames) => Add(new Gauge(name, help, labelNames));

    public Histogram Histogram(string name, string help, double[] upperBounds, params string[] labelNames) =>
        Add(new Histogram(name, help, upperBounds, labelNames));

    /// <summary>Runs <paramref name="refresh"/> before each scrape, e.g. to set gauges from a role's state.</summary>
    public void BeforeScrape(Action refresh)
    {
        lock (_scrapeGate) _beforeScrape.Add(refresh);
    }

    /// <summary>All metrics in the Prometheus text format.</summary>
    public string Scrape()
    {
        lock (_scrapeGate)
        {
            foreach (var refresh in _beforeScrape) refresh();
            var text = new StringBuilder();
            foreach (var family in _families) family.Write(text);
            return text.ToString();
        }
    }

    private T Add<T>(T family) where T : MetricFamily
    {
        lock (_scrapeGate)
        {
            if (_families.Any(f => f.Name == family.Name)) throw new ArgumentException($"metric {family.Name} is registered twice");
            _families.Add(family);
        }
        return family;
    }
}

/// <summary>One metric name with its help, type and children by label values.</summary>
public abstract class MetricFamily
{
    private readonly ConcurrentDictionary<string, object> _children = new();
    private readonly string[] _labelNames;

    protected MetricFamily(string name, string help, string type, string[] labelNames)
    {
        if (!IsName(name)) throw new ArgumentException($"metric name '{name}' is not a Prometheus name");
        (Name, Help, Type, _labelNames) = (name, help, type, labelNames);
    }

    public string Name { get; }
    public string Help { get; }
    public string Type { get; }

    /// <summary>Drops every child; used by gauges that are rebuilt from state at each scrape.</summary>
    public void Clear() => _children.Clear();

    protected TChild Child<TChild>(string[] labelValues, Func<TChild> create) where TChild : class
    {
        if (labelValues.Length != _labelNames.Length)
            throw new ArgumentException($"metric {Name}: {labelValues.Length} label values for labels ({string.Join(", ", _labelNames)})");
        return (TChild)_children.GetOrAdd(Labels(labelValues), _ => create());
    }

    internal void Write(StringBuilder text)
    {
        text.Append("# HELP ").Append(Name).Append(' ').Append(Help.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal)).Append('\n');
        text.Append("# TYPE ").Append(Name).Append(' ').Append(Type).Append('\n');
        foreach (var (labels, child) in _children.OrderBy(c => c.Key, StringComparer.Ordinal))
            WriteChild(text, labels, child);
    }

    protected abstract void WriteChild(StringBuilder text, string labels, object child);

    /// <summary>`a="x",b="y"` with the values escaped; empty without labels.</summary>
    private string Labels(string[] values)
    {
        var text = new StringBuilder();
        for (int i = 0; i < values.Length; i++)
        {
            if (i > 0) text.Append(',');
            text.Append(_labelNames[i]).Append("=\"")
                .Append(values[i].Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal))
                .Append('"');
        }
        return text.ToString();
    }

    protected static void Sample(StringBuilder text, string name, string labels, double value)
    {
        text.Append(name);
        if (labels.Length > 0) text.Append('{').Append(labels).Append('}');
        text.Append(' ').Append(Format(value)).Append('\n');
    }

    internal static string Format(double value) =>
        double.IsPositiveInfinity(value) ? "+Inf" : double.IsNegativeInfinity(value) ? "-Inf" : double.IsNaN(value) ? "NaN" : value.ToString("R", CultureInfo.InvariantCulture);

    private static bool IsName(string name) =>
        name.Length > 0 && !char.IsAsciiDigit(name[0]) && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or ':');
}

/// <summary>A value that only goes up (Prometheus counter; its name ends in _total).</summary>
public sealed class Counter(string name, string help, string[] labelNames) : MetricFamily(name, help, "counter", labelNames)
{
    public CounterChild WithLabels(params string[] labelValues) => Child(labelValues, () => new CounterChild());

    protected override void WriteChild(StringBuilder text, string labels, object child) => Sample(text, Name, labels, ((CounterChild)child).Value);
}

public sealed class CounterChild
{
    private double _value;
    public double Value => Volatile.Read(ref _value);
    public void Increment(double amount = 1) => AtomicDouble.Add(ref _value, amount);
}

/// <summary>A value that goes up and down.</summary>
public sealed class Gauge(string name, string help, string[] labelNames) : MetricFamily(name, help, "gauge", labelNames)
{
    public GaugeChild WithLabels(params string[] labelValues) => Child(labelValues, () => new GaugeChild());

    protected override void WriteChild(StringBuilder text, string labels, object child) => Sample(text, Name, labels, ((GaugeChild)child).Value);
}

public sealed class GaugeChild
{
    private double _value;
    public double Value => Volatile.Read(ref _value);
    public void Set(double value) => Volatile.Write(ref _value, value);
}

/// <summary>Observations counted in cumulative buckets, with their sum and count.</summary>
public sealed class Histogram : MetricFamily
{
    private readonly double[] _upperBounds;

    public Histogram(string name, string help, double[] upperBounds, string[] labelNames) : base(name, help, "histogram", labelNames)
    {
        if (upperBounds.Length == 0 || upperBounds.Zip(upperBounds.Skip(1)).Any(p => p.First >= p.Second))
            throw new ArgumentException($"histogram {name}: bucket bounds must be increasing");
        _upperBounds = upperBounds;
    }

    /// <summary>Bounds in seconds from 100 µs to 30 s, for step phases and RPCs.</summary>
    public static double[] SecondsBuckets { get; } = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    public HistogramChild WithLabels(params string[] labelValues) => Child(labelValues, () => new HistogramChild(_upperBounds));

    protected override void WriteChild(StringBuilder text, string labels, object child)
    {
        var histogram = (HistogramChild)child;
        string prefix = labels.Length == 0 ? "" : labels + ",";
        long cumulative = 0;
        for (int i = 0; i < _upperBounds.Length; i++)
        {
            cumulative += histogram.BucketCount(i);
            Sample(text, Name + "_bucket", prefix + "le=\"" + Format(_upperBounds[i]) + "\"", cumulative);
        }
        cumulative += histogram.BucketCount(_upperBounds.Length);
        Sample(text, Name + "_bucket", prefix + "le=\"+Inf\"", cumulative);
        Sample(text, Name + "_sum", labels, histogram.Sum);
        Sample(text, Name + "_count", labels, cumulative);
    }
}

public sealed class HistogramChild(double[] upperBounds)
{
    private readonly long[] _counts = new long[upperBounds.Length + 1];
    private double _sum;

    public double Sum => Volatile.Read(ref _sum);
    public long BucketCount(int index) => Interlocked.Read(ref _counts[index]);

    public void Observe(double value)
    {
        int bucket = 0;
        while (bucket < upperBounds.Length && value > upperBounds[bucket]) bucket++;
        Interlocked.Increment(ref _counts[bucket]);
        AtomicDouble.Add(ref _sum, value);
    }
}

internal static class AtomicDouble
{
    public static void Add(ref double target, double amount)
    {
        double seen = Volatile.Read(ref target);
        while (true)
        {
            double found = Interlocked.CompareExchange(ref target, seen + amount, seen);
            if (found.Equals(seen)) return;
            seen = found;
        }
    }
}
