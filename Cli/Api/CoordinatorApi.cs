using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Coordinator.Api;
using Cluster.Shared.Jobs;
using Cluster.Shared.Security;

namespace Cluster.Cli.Api;

/// <summary>Client of the coordinator's JSON API; every failure names the address.</summary>
public sealed class CoordinatorApi : IDisposable
{
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    private readonly HttpClient _http;

    /// <summary>Every request carries the cluster secret; an https API must present a certificate of the cluster CA when one is given.</summary>
    public CoordinatorApi(string baseUrl, ClusterSecurity security, TimeSpan requestTimeout)
    {
        BaseUrl = baseUrl;
        try { _http = ClusterTransport.HttpClient(baseUrl, security, requestTimeout); }
        catch (ArgumentException e) { throw new CliException(e.Message, exitCode: 2); }
    }

    public string BaseUrl { get; }

    public async Task<JobView> SubmitAsync(JobSpecification spec, CancellationToken cancellationToken)
    {
        using var response = await Send(() => _http.PostAsJsonAsync("api/jobs", spec, Json, cancellationToken));
        return await Read<JobView>(response, cancellationToken);
    }

    public async Task<JobView> GetJobAsync(string jobId, CancellationToken cancellationToken)
    {
        using var response = await Send(() => _http.GetAsync($"api/jobs/{Uri.EscapeDataString(jobId)}", cancellationToken));
        return await Read<JobView>(response, cancellationToken);
    }

    public async Task<List<JobView>> ListJobsAsync(CancellationToken cancellationToken)
    {
        using var response = await Send(() => _http.GetAsync("api/jobs", cancellationToken));
        return await Read<List<JobView>>(response, cancellationToken);
    }

    /// <summary>Saves the job's merged timeline (Chrome trace JSON) to <paramref name="path"/>.</summary>
    public async Task SaveTimelineAsync(string jobId, string path, CancellationToken cancellationToken)
    {
        using var response = await Send(() => _http.GetAsync($"api/jobs/{Uri.EscapeDataString(jobId)}/timeline", HttpCompletionOption.ResponseHeadersRead, cancellationToken));
        if (!response.IsSuccessStatusCode) await Read<JsonElement>(response, cancellationToken);
        await using var file = File.Create(path);
        await response.Content.CopyToAsync(file, cancellationToken);
    }

    private async Task<HttpResponseMessage> Send(Func<Task<HttpResponseMessage>> request)
    {
        try
        {
            return await request();
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException { InnerException: TimeoutException })
        {
            throw new Shared.Rpc.PeerUnreachableException($"coordinator API at {BaseUrl} is not reachable ({e.Message})", e);
        }
    }

    private async Task<T> Read<T>(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        if (!response.IsSuccessStatusCode)
        {
            string body = await response.Content.ReadAsStringAsync(cancellationToken);
            ErrorView? error = null;
            try { error = JsonSerializer.Deserialize<ErrorView>(body, Json); }
            catch (JsonException) { }
            throw new CliException(error?.Errors is null
                ? $"coordinator API at {BaseUrl} answered {(int)response.StatusCode} {response.ReasonPhrase}"
                : string.Join(Environment.NewLine, error.Errors), exitCode: 2);
        }
        return await response.Content.ReadFromJsonAsync<T>(Json, cancellationToken)
            ?? throw new CliException($"coordinator API at {BaseUrl} sent an empty answer", exitCode: 1);
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>An error for the user: printed as it is, then the process exits with <see cref="ExitCode"/>.</summary>
public sealed class CliException(string message, int exitCode) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
