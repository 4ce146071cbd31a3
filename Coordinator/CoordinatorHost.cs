using System.Net;
using Cluster.Coordinator.Api;
using Cluster.Coordinator.Dashboard;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Services;
using Cluster.Coordinator.State;
using Cluster.Coordinator.Telemetry;
using Cluster.Shared.Health;
using Cluster.Shared.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator;

/// <summary>
/// Starts the coordinator: gRPC for cluster members on one port (HTTP/2), the JSON API on
/// another (HTTP/1.1, so that browsers and curl reach it). Both require the cluster secret and
/// serve TLS when certificates are given; the gRPC port may also require member certificates.
/// </summary>
public sealed class CoordinatorHost : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly CoordinatorStateFile? _state;
    private readonly LeasePort? _leasePort;

    private CoordinatorHost(WebApplication app, CoordinatorStateFile? state, LeasePort? leasePort, string grpcUrl, string httpUrl) =>
        (_app, _state, _leasePort, GrpcUrl, HttpUrl) = (app, state, leasePort, grpcUrl, httpUrl);

    public string GrpcUrl { get; }
    public string HttpUrl { get; }
    /// <summary>The lease port's number (told to workers with their assignments), or null when it serves none.</summary>
    public int? LeasePortNumber => _leasePort?.Port;
    public JobBoard Board => _app.Services.GetRequiredService<JobBoard>();
    /// <summary>Every endpoint the coordinator serves (gRPC methods and HTTP routes), for tests that must cover them all.</summary>
    public IReadOnlyList<Endpoint> Endpoints => _app.Services.GetRequiredService<EndpointDataSource>().Endpoints;

    public static async Task<CoordinatorHost> StartAsync(CoordinatorOptions options, CancellationToken cancellationToken)
    {
        var errors = options.Validate().ToList();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var state = options.StatePath is { } path ? CoordinatorStateFile.Open(path) : null;
        try
        {
            return await StartAsync(options, state, cancellationToken);
        }
        catch
        {
            state?.Dispose();
            throw;
        }
    }

    private static async Task<CoordinatorHost> StartAsync(CoordinatorOptions options, CoordinatorStateFile? state, CancellationToken cancellationToken)
    {
        var board = new JobBoard(TimeProvider.System) { RingJoinWindow = options.RingJoinWindow, Journal = state };
        int replayed = state is null ? 0 : board.Restore(state.ReadEvents());
        var leasePort = options.LeasePort < 0 ? null : LeasePort.Start(options.BindAddress, options.LeasePort, options.Security!, board);
        try
        {
            return await StartAsync(options, state, board, replayed, leasePort, cancellationToken);
        }
        catch
        {
            if (leasePort is not null) await leasePort.DisposeAsync();
            throw;
        }
    }

    private static async Task<CoordinatorHost> StartAsync(CoordinatorOptions options, CoordinatorStateFile? state, JobBoard board, int replayed,
        LeasePort? leasePort, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        Shared.Health.EmbeddedHostLifetime.Use(builder.Services);
        builder.Logging.SetMinimumLevel(LogLevel.Warning).AddFilter("Cluster", LogLevel.Information);
        var bind = IPAddress.Parse(options.BindAddress);
        var security = options.Security!;
        ListenOptions? grpcListen = null, httpListen = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(bind, options.GrpcPort, listen =>
            {
                (grpcListen = listen).Protocols = HttpProtocols.Http2;
                ClusterEndpoints.Secure(listen, security, memberEndpoint: true);
            });
            kestrel.Listen(bind, options.HttpPort, listen =>
            {
                (httpListen = listen).Protocols = HttpProtocols.Http1;
                ClusterEndpoints.Secure(listen, security, memberEndpoint: false);
            });
        });
        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = options.GrpcMessageBytesMax;
            grpc.Interceptors.Add<CoordinatorInterceptor>();
        });
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(board);
        if (leasePort is not null) builder.Services.AddSingleton(leasePort);
        builder.Services.AddHostedService<MaintenanceService>();
        builder.Services.AddObservability();
        var app = builder.Build();
        app.RequireClusterSecret(security.Secret);
        app.MapGrpcService<CoordinatorService>();
        app.MapGrpcService<DataService>();
        app.MapJobsApi();
        app.MapDashboard();
        app.MapOpenApi("/openapi/{documentName}.json");
        var readiness = new Readiness();
        app.MapHealthProbes(readiness);
        await app.StartAsync(cancellationToken);
        readiness.MarkReady();
        if (state is not null)
            CoordinatorLog.StateRestored(app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Cluster.Coordinator"), state.Path, replayed,
                board.Read((jobs, _) => jobs.Values.Count(j => j.State is JobState.Running or JobState.Queued)));

        // Kestrel writes the bound endpoint (with the port it picked for port 0) back into each ListenOptions.
        string scheme = ClusterEndpoints.Scheme(security);
        var info = app.Services.GetRequiredService<CoordinatorInfo>();
        (info.GrpcUrl, info.HttpUrl, info.StartedAt) = (Url(scheme, grpcListen!), Url(scheme, httpListen!), DateTimeOffset.UtcNow);
        return new CoordinatorHost(app, state, leasePort, info.GrpcUrl, info.HttpUrl);
    }

    private static string Url(string scheme, ListenOptions listen) => $"{scheme}://{listen.IPEndPoint!.Address}:{listen.IPEndPoint.Port}";

    public Task WaitForShutdownAsync(CancellationToken cancellationToken) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        // Open lease connections end at once: their workers ask again, of the coordinator that comes back.
        if (_leasePort is not null) await _leasePort.DisposeAsync();
        await _app.StopAsync();
        await _app.DisposeAsync();
        _state?.Dispose();
    }
}

internal static partial class CoordinatorLog
{
    [LoggerMessage(Level = LogLevel.Information, Message = "State {Path}: replayed {Events} recorded events; {Open} jobs queued or running resume")]
    public static partial void StateRestored(ILogger logger, string path, int events, int open);
}
