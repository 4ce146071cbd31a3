using System.Net;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Telemetry;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Health;
using Cluster.Shared.Rpc;
using Cluster.Shared.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.ParameterServer;

/// <summary>Settings of one parameter-server process.</summary>
public sealed record ParameterServerOptions
{
    /// <summary>Address to bind; loopback by default.</summary>
    public string BindAddress { get; init; } = "127.0.0.1";
    /// <summary>gRPC port; 0 picks a free one.</summary>
    public int Port { get; init; }
    /// <summary>Port of the data port (raw TCP for pushes and pulls, see parameter_server.proto); 0 picks a free one.</summary>
    public int DataPort { get; init; }
    /// <summary>URL workers should use; default: the bound address.</summary>
    public string? AdvertiseUrl { get; init; }
    /// <summary>Coordinator to register with; null: stand alone.</summary>
    public string? CoordinatorUrl { get; init; }
    /// <summary>How long to keep trying to reach the coordinator at start.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>The cluster secret and TLS settings; required (see SECURITY.md).</summary>
    public ClusterSecurity? Security { get; init; }
    /// <summary>Largest gRPC message accepted, in bytes: a 1 MiB chunk plus its framing, or a header with a model's layout.</summary>
    public int GrpcMessageBytesMax { get; init; } = ClusterTransport.MessageBytesMaxDefault;
    /// <summary>Largest model (this server's key range of it) one job may hold, in bytes of float32 weights.</summary>
    public long ModelBytesMax { get; init; } = ParameterStore.ElementsMax * sizeof(float);
    /// <summary>Memory one job may take, in bytes: its weights, optimizer state and one gradient buffer per rank.</summary>
    public long JobMemoryBytesMax { get; init; } = 32L << 30;
    /// <summary>Jobs whose parameters this server holds at once.</summary>
    public int JobsMax { get; init; } = 64;
    /// <summary>Where shared regions are made for workers on this host that ask for one (worker --ps-transport shm); null: none.</summary>
    public string? SharedRegionDirectory { get; init; } = Shared.Wire.SharedRegion.DirectoryOnThisHost;

    /// <summary>HTTP/1.1 port of /metrics, /timeline, /stats and the health probes; 0 picks a free one.</summary>
    public int HttpPort { get; init; }

    /// <summary>Where and how often jobs are checkpointed; by default they are not.</summary>
    public Checkpoints.CheckpointOptions Checkpoints { get; init; } = new();

    public IEnumerable<string> Validate()
    {
        if (!IPAddress.TryParse(BindAddress, out _)) yield return $"bind: '{BindAddress}' is not an IP address";
        if (Port is < 0 or > 65535) yield return $"port: {Port} is out of range; expected 0 to 65535";
        if (DataPort is < 0 or > 65535) yield return $"data-port: {DataPort} is out of range; expected 0 to 65535";
        if (HttpPort is < 0 or > 65535) yield return $"http-port: {HttpPort} is out of range; expected 0 to 65535";
        if (Security is null) yield return "secret: none given; expected --secret, --secret-file or CLUSTER_SECRET";
        else foreach (string error in Security.ValidateServing(BindAddress)) yield return error;
        if (GrpcMessageBytesMax < 2 << 20) yield return $"grpc-message-bytes-max: {GrpcMessageBytesMax}; expected at least {2 << 20} (a 1 MiB chunk and its framing)";
        if (ModelBytesMax is < 4 or > ParameterStore.ElementsMax * sizeof(float))
            yield return $"model-bytes-max: {ModelBytesMax}; expected 4 to {ParameterStore.ElementsMax * sizeof(float)}";
        if (JobMemoryBytesMax < ModelBytesMax) yield return $"job-memory-bytes-max: {JobMemoryBytesMax}; expected at least model-bytes-max ({ModelBytesMax})";
        if (JobsMax < 1) yield return $"jobs-max: {JobsMax}; expected 1 or more";
        foreach (string error in Checkpoints.Validate()) yield return error;
    }
}

/// <summary>Starts the parameter server's gRPC endpoint and registers it with the coordinator.</summary>
public sealed class ParameterServerHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ParameterServerHost(WebApplication app, string url, string httpUrl, ParameterStore store, string dataUrl) =>
        (_app, Url, HttpUrl, Store, DataUrl) = (app, url, httpUrl, store, dataUrl);

    /// <summary>The gRPC address the server advertises.</summary>
    public string Url { get; }

    /// <summary>The data port's address (raw TCP for pushes and pulls); workers learn it from Initialize.</summary>
    public string DataUrl { get; }

    /// <summary>Base URL of the HTTP side: /metrics, /timeline, /stats.</summary>
    public string HttpUrl { get; }

    public ParameterStore Store { get; }

    /// <summary>Data-port connections being served now; for tests.</summary>
    public int DataPortConnections => _app.Services.GetRequiredService<DataPort.ParameterDataPort>().Open;

    /// <summary>Every endpoint the server serves, for tests that must cover them all.</summary>
    public IReadOnlyList<Microsoft.AspNetCore.Http.Endpoint> Endpoints =>
        _app.Services.GetRequiredService<Microsoft.AspNetCore.Routing.EndpointDataSource>().Endpoints;

    public static async Task<ParameterServerHost> StartAsync(ParameterServerOptions options, CancellationToken cancellationToken)
    {
        var errors = options.Validate().ToList();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var security = options.Security!;
        var builder = WebApplication.CreateSlimBuilder();
        Shared.Health.EmbeddedHostLifetime.Use(builder.Services);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        ListenOptions? grpcListen = null, httpListen = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Parse(options.BindAddress), options.Port, listen =>
            {
                (grpcListen = listen).Protocols = HttpProtocols.Http2;
                ClusterEndpoints.Secure(listen, security, memberEndpoint: true);
            });
            kestrel.Listen(IPAddress.Parse(options.BindAddress), options.HttpPort, listen =>
            {
                (httpListen = listen).Protocols = HttpProtocols.Http1;
                ClusterEndpoints.Secure(listen, security, memberEndpoint: false);
            });
            // Gradients arrive as long streams: flow-control windows of a few MiB keep the socket busy.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 << 20;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 << 20;
        });
        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = options.GrpcMessageBytesMax;
            grpc.Interceptors.Add<TelemetryInterceptor>();
        });
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(services => new Checkpoints.JobCheckpoints(
            options.Checkpoints, services.GetRequiredService<ILoggerFactory>().CreateLogger("Cluster.ParameterServer.Checkpoints")));
        builder.Services.AddSingleton(services => RestoredStore(services.GetRequiredService<Checkpoints.JobCheckpoints>()));
        builder.Services.AddSingleton<ParameterServerTelemetry>();
        builder.Services.AddSingleton(services => DataPort.ParameterDataPort.Start(options.BindAddress, options.DataPort,
            options.AdvertiseUrl is { } advertise ? new Uri(advertise).Host : options.BindAddress, security,
            new ParameterTraffic(services.GetRequiredService<ParameterStore>()),
            new TrafficObserver(services.GetRequiredService<ParameterServerTelemetry>(), services.GetRequiredService<ParameterStore>()),
            options.SharedRegionDirectory, options.ModelBytesMax));
        var app = builder.Build();
        app.RequireClusterSecret(security.Secret);
        app.MapGrpcService<ParameterServerService>();
        app.MapTelemetryEndpoints();
        _ = app.Services.GetRequiredService<ParameterStore>(); // loads the checkpoints before the first call
        var dataPort = app.Services.GetRequiredService<DataPort.ParameterDataPort>();
        var readiness = new Readiness();
        app.MapHealthProbes(readiness);
        await app.StartAsync(cancellationToken);

        string scheme = ClusterEndpoints.Scheme(security);
        string url = options.AdvertiseUrl ?? UrlOf(scheme, grpcListen!);
        string httpUrl = UrlOf(scheme, httpListen!);
        var host = new ParameterServerHost(app, url, httpUrl, app.Services.GetRequiredService<ParameterStore>(), dataPort.Address);
        if (options.CoordinatorUrl is not null)
        {
            try { await RegisterAsync(options, url, httpUrl, cancellationToken); }
            catch { await host.DisposeAsync(); throw; }
        }
        // Ready once workers can find it: registered with the coordinator (or standing alone).
        readiness.MarkReady();
        return host;
    }

    /// <summary>The store with every job's newest valid checkpoint loaded (corrupt ones are logged and skipped).</summary>
    private static ParameterStore RestoredStore(Checkpoints.JobCheckpoints checkpoints)
    {
        var store = new ParameterStore(checkpoints);
        foreach (var snapshot in checkpoints.LoadNewest()) store.Restore(snapshot);
        return store;
    }

    private static string UrlOf(string scheme, ListenOptions listen) => $"{scheme}://{listen.IPEndPoint!.Address}:{listen.IPEndPoint.Port}";

    private static async Task RegisterAsync(ParameterServerOptions options, string url, string httpUrl, CancellationToken cancellationToken)
    {
        using var channel = ClusterTransport.Channel(options.CoordinatorUrl!, options.Security!, "coordinator");
        var coordinator = new Coordinator.CoordinatorClient(channel);
        await Reconnect.UntilAsync("coordinator", options.CoordinatorUrl!, options.ConnectTimeout,
            deadline => coordinator.RegisterParameterServerAsync(
                new RegisterParameterServerRequest { Address = url, HttpUrl = httpUrl }, deadline: deadline, cancellationToken: cancellationToken).ResponseAsync,
            cancellationToken);
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
