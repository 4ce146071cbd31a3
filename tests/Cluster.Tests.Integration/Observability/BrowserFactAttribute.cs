namespace Cluster.Tests.Integration.Observability;

/// <summary>A browser test: skipped, with the reason, where Debian's Chromium is not installed.</summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public const string ChromiumPath = "/usr/bin/chromium";

    public BrowserFactAttribute()
    {
        if (!File.Exists(ChromiumPath))
            Skip = $"no browser: {ChromiumPath} is missing (apt-get install -y chromium; .ci/run installs it)";
    }
}
