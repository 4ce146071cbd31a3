using System.Net;
using Cluster.Coordinator.Api;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Services;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator;

/// <summary>
/// Starts the coordinator: gRPC for cluster members on one port (HTTP/2), the JSON API on
/// another (HTTP/1.1, so that browsers and curl reach it without TLS).
/// </summary>
public sealed class CoordinatorHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private CoordinatorHost(WebApplication app, string grpcUrl, string httpUrl) => (_app, GrpcUrl, HttpUrl) = (app, grpcUrl, httpUrl);

    public string GrpcUrl { get; }
    public string HttpUrl { get; }
    public JobBoard Board => _app.Services.GetRequiredService<JobBoard>();

    public static async Task<CoordinatorHost> StartAsync(CoordinatorOptions options, CancellationToken cancellationToken)
    {
        var errors = options.Validate().ToList();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning).AddFilter("Cluster", LogLevel.Information);
        var bind = IPAddress.Parse(options.BindAddress);
        ListenOptions? grpcListen = null, httpListen = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(bind, options.GrpcPort, listen => (grpcListen = listen).Protocols = HttpProtocols.Http2);
            kestrel.Listen(bind, options.HttpPort, listen => (httpListen = listen).Protocols = HttpProtocols.Http1);
        });
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(services => new JobBoard(services.GetRequiredService<TimeProvider>()) { RingJoinWindow = options.RingJoinWindow });
        builder.Services.AddHostedService<MaintenanceService>();
        var app = builder.Build();
        app.MapGrpcService<CoordinatorService>();
        app.MapJobsApi();
        await app.StartAsync(cancellationToken);

        // Kestrel writes the bound endpoint (with the port it picked for port 0) back into each ListenOptions.
        return new CoordinatorHost(app, Url(grpcListen!), Url(httpListen!));
    }

    private static string Url(ListenOptions listen) => $"http://{listen.IPEndPoint!.Address}:{listen.IPEndPoint.Port}";

    public Task WaitForShutdownAsync(CancellationToken cancellationToken) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
