using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Cluster.Tests.Integration.Support;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace Cluster.Tests.Integration.Observability;

/// <summary>
/// The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright) while
/// `cluster local` trains a 2-worker job whose last worker is slowed on purpose.
/// </summary>
[Trait("Tier", "browser")]
public sealed partial class DashboardBrowserTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(90);
    private static readonly string[] ChromiumArgs =
        ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];

    [BrowserFact]
    public async Task The_dashboard_shows_every_member_a_growing_loss_curve_and_the_slowed_worker_as_slowest()
    {
        using var local = ClusterCommand.Start(
            "local", "--model", "mlp", "--workers", "2", "--epochs", "2", "--train-limit", "6400", "--test-limit", "500",
            "--slow-worker-ms", "40");
        string api = await WaitForApiAsync(local);

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = BrowserFactAttribute.ChromiumPath, Headless = true, Args = ChromiumArgs,
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 1000 } });
        page.SetDefaultTimeout(60_000);
        Assertions.SetDefaultExpectTimeout(60_000);

        // Without the secret the coordinator answers with its log-in form; a wrong secret is refused, the right one lets in.
        await page.GotoAsync($"{api}/");
        await Expect(page.Locator("#login")).ToBeVisibleAsync();
        await Expect(page.Locator("#view")).ToHaveCountAsync(0);
        await page.FillAsync("#login-secret", "not-the-secret");
        await page.PressAsync("#login-secret", "Enter");
        await Expect(page.Locator("#login-reason")).ToHaveTextAsync("That is not the cluster secret.");
        await page.FillAsync("#login-secret", TestSecurity.Secret.Value);
        await page.PressAsync("#login-secret", "Enter");
        await Expect(page.Locator("#login")).ToHaveCountAsync(0);

        // Overview: one row for the coordinator, one per parameter server, one per worker.
        await Expect(page.Locator("[data-testid=member-row][data-role=worker]")).ToHaveCountAsync(2);
        await Expect(page.Locator("[data-testid=member-row][data-role=parameter-server]")).ToHaveCountAsync(1);
        await Expect(page.Locator("[data-testid=member-row][data-role=coordinator]")).ToHaveCountAsync(1);
        await Expect(page.Locator("[data-testid=job-row]")).ToHaveCountAsync(1);
        await Expect(page.Locator("#connection")).ToHaveTextAsync("live");
        await Expect(page.Locator("[data-testid=member-row][data-role=worker] .state-training")).ToHaveCountAsync(2);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Artifact("dashboard-overview.png"), FullPage = true });

        // The job page: the loss curve gains points while the job trains.
        await page.ClickAsync("[data-testid=job-row] a");
        var lossChart = page.Locator("#loss-chart");
        await Expect(lossChart).ToHaveAttributeAsync("data-points", new Regex("^[1-9]"));
        int first = int.Parse((await lossChart.GetAttributeAsync("data-points"))!);
        int later = first;
        var giveUpAt = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (later <= first && DateTime.UtcNow < giveUpAt)
        {
            await Task.Delay(500);
            later = int.Parse((await lossChart.GetAttributeAsync("data-points"))!);
        }
        Assert.True(later > first, $"the loss curve stayed at {first} points");

        // The slowed worker (started with --slow-step-ms by `cluster local --slow-worker-ms`) is flagged as the slowest rank.
        string slowWorker = await SlowWorkerIdAsync(api, local.ProcessId);
        var slowestRow = page.Locator("[data-testid=rank-row][data-slowest=true]");
        await Expect(slowestRow).ToHaveCountAsync(1);
        await Expect(slowestRow).ToHaveAttributeAsync("data-worker", slowWorker);
        await Expect(slowestRow.Locator(".badge")).ToHaveTextAsync("slowest");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Artifact("dashboard-job.png"), FullPage = true });

        Assert.Equal(0, await local.WaitAsync(TimeSpan.FromMinutes(3)));
    }

    private static ILocatorAssertions Expect(ILocator locator) => Assertions.Expect(locator);

    /// <summary>The worker id of the process that `cluster local` started with --slow-step-ms.</summary>
    private static async Task<string> SlowWorkerIdAsync(string api, int localPid)
    {
        int slowPid = ProcessTable.WithCommandLineContaining($"--slow-step-ms").Intersect(ProcessTable.WithCommandLineContaining($"--parent-pid {localPid}")).Single();
        using var http = TestSecurity.HttpClient();
        var members = await http.GetFromJsonAsync<JsonElement>($"{api}/api/members");
        return members.GetProperty("workers").EnumerateArray().Single(w => w.GetProperty("processId").GetInt32() == slowPid).GetProperty("id").GetString()!;
    }

    /// <summary>Screenshots go to $TEST_ARTIFACTS_DIR (set by .ci/run), else artifacts/ next to the tests.</summary>
    private string Artifact(string name)
    {
        string directory = Environment.GetEnvironmentVariable("TEST_ARTIFACTS_DIR") is { Length: > 0 } dir ? dir : Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(directory);
        string path = Path.Combine(directory, name);
        output.WriteLine($"screenshot: {path}");
        return path;
    }

    private static async Task<string> WaitForApiAsync(ClusterCommand local)
    {
        var giveUpAt = DateTime.UtcNow + Startup;
        while (DateTime.UtcNow < giveUpAt)
        {
            var match = ApiLine().Match(local.Stdout.Replace("\n", "", StringComparison.Ordinal));
            if (match.Success) return match.Groups[1].Value;
            if (local.HasExited) break;
            await Task.Delay(100);
        }
        Assert.Fail($"`cluster local` printed no API address.\n{local.Stdout}\n{local.Stderr}");
        return "";
    }

    [GeneratedRegex(@"API (http://[0-9.]+:[0-9]+)")]
    private static partial Regex ApiLine();
}
