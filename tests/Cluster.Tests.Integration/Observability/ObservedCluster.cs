using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Coordinator;
using Cluster.ParameterServer;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.Observability;

/// <summary>
/// One small 2-worker job trained to the end, shared by the observability tests: an in-process
/// coordinator and parameter server, and two real worker processes, the second of which is
/// slowed on purpose (--slow-step-ms). The workers stay up after the job so that
/// their /metrics and /timeline can be read.
/// </summary>
public sealed class ObservedCluster : IAsyncLifetime
{
    public const int SlowStepMillis = 40;
    private static readonly TimeSpan JobTimeout = TimeSpan.FromMinutes(3);

    private ClusterCommand? _fastWorker, _slowWorker;

    public CoordinatorHost Coordinator { get; private set; } = null!;
    public ParameterServerHost Server { get; private set; } = null!;
    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromSeconds(30) };
    public string JobId { get; private set; } = "";
    public int SlowWorkerProcessId => _slowWorker!.ProcessId;
    public string Api => Coordinator.HttpUrl;
    /// <summary>Where the fast worker writes TensorBoard event files.</summary>
    public string TensorBoardDirectory { get; } = Directory.CreateTempSubdirectory("cluster-tensorboard-").FullName;

    public async Task InitializeAsync()
    {
        Coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions(), CancellationToken.None);
        Server = await ParameterServerHost.StartAsync(new ParameterServerOptions { CoordinatorUrl = Coordinator.GrpcUrl }, CancellationToken.None);
        _fastWorker = ClusterCommand.Start("worker", "--coordinator", Coordinator.GrpcUrl, "--threads", "1", "--tensorboard", TensorBoardDirectory);
        _slowWorker = ClusterCommand.Start("worker", "--coordinator", Coordinator.GrpcUrl, "--threads", "1", "--slow-step-ms", SlowStepMillis.ToString());

        var submitted = await Http.PostAsJsonAsync($"{Api}/api/jobs", new
        {
            model = "mlp", workers = 2, epochs = 1, batchSize = 64, trainLimit = 3200, testLimit = 500,
        });
        Assert.True(submitted.IsSuccessStatusCode, await submitted.Content.ReadAsStringAsync());
        JobId = (await submitted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;

        var giveUpAt = DateTime.UtcNow + JobTimeout;
        string state = "";
        while (DateTime.UtcNow < giveUpAt)
        {
            var job = await Http.GetFromJsonAsync<JsonElement>($"{Api}/api/jobs/{JobId}");
            state = job.GetProperty("state").GetString()!;
            if (state is "succeeded" or "failed" or "cancelled") break;
            await Task.Delay(250);
        }
        Assert.True(state == "succeeded", $"job {JobId} ended {state}\nfast worker:\n{_fastWorker.Stderr}{_fastWorker.Stdout}\nslow worker:\n{_slowWorker.Stderr}{_slowWorker.Stdout}");
    }

    public async Task<JsonElement> GetJsonAsync(string url) => await Http.GetFromJsonAsync<JsonElement>(url);

    public async Task DisposeAsync()
    {
        _fastWorker?.Dispose();
        _slowWorker?.Dispose();
        if (Server is not null) await Server.DisposeAsync();
        if (Coordinator is not null) await Coordinator.DisposeAsync();
        Http.Dispose();
        Directory.Delete(TensorBoardDirectory, recursive: true);
    }
}
