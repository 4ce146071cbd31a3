using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Coordinator.Jobs;
using Microsoft.Extensions.Hosting;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// Asks every registered parameter server for its /stats every <see cref="PollInterval"/>, so
/// that the dashboard shows whether each server answers and each job's rejected gradients.
/// </summary>
public sealed class ServerStatsPoller(JobBoard board, MemberDirectory members, TimeProvider time) : BackgroundService
{
    public static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(2);
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var http = MemberHttp.Create(RequestTimeout);
        using var timer = new PeriodicTimer(PollInterval);
        try
        {
            do
            {
                var addresses = board.Read((_, registry) => registry.Servers.Select(s => s.Address).ToList());
                await Task.WhenAll(addresses.Select(address => PollAsync(http, address, stoppingToken)));
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task PollAsync(HttpClient http, string address, CancellationToken cancellationToken)
    {
        if (members.Server(address)?.HttpUrl is not { } url) return;
        try
        {
            var stats = await http.GetFromJsonAsync<ServerStatsSnapshot>($"{url}/stats", Json, cancellationToken);
            members.Polled(address, stats, stats is null ? "empty answer" : null, time.GetUtcNow());
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            members.Polled(address, null, e.Message, time.GetUtcNow());
        }
    }
}
