using System.Net;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Telemetry;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Cluster.Shared.Rpc;
using Grpc.Net.Client;
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
    /// <summary>URL workers should use; default: the bound address.</summary>
    public string? AdvertiseUrl { get; init; }
    /// <summary>Coordinator to register with; null: stand alone.</summary>
    public string? CoordinatorUrl { get; init; }
    /// <summary>How long to keep trying to reach the coordinator at start.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>HTTP/1.1 port of /metrics, /timeline and /stats; 0 picks a free one.</summary>
    public int HttpPort { get; init; }
}

/// <summary>Starts the parameter server's gRPC endpoint and registers it with the coordinator.</summary>
public sealed class ParameterServerHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ParameterServerHost(WebApplication app, string url, string httpUrl, ParameterStore store) => (_app, Url, HttpUrl, Store) = (app, url, httpUrl, store);

    /// <summary>The gRPC address the server advertises.</summary>
    public string Url { get; }

    /// <summary>Base URL of the HTTP side: /metrics, /timeline, /stats.</summary>
    public string HttpUrl { get; }

    public ParameterStore Store { get; }

    public static async Task<ParameterServerHost> StartAsync(ParameterServerOptions options, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        ListenOptions? grpcListen = null, httpListen = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Parse(options.BindAddress), options.Port, listen => (grpcListen = listen).Protocols = HttpProtocols.Http2);
            kestrel.Listen(IPAddress.Parse(options.BindAddress), options.HttpPort, listen => (httpListen = listen).Protocols = HttpProtocols.Http1);
            // Gradients arrive as long streams: flow-control windows of a few MiB keep the socket busy.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 << 20;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 << 20;
        });
        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = 4 << 20;
            grpc.Interceptors.Add<TelemetryInterceptor>();
        });
        builder.Services.AddSingleton<ParameterStore>();
        builder.Services.AddSingleton<ParameterServerTelemetry>();
        var app = builder.Build();
        app.MapGrpcService<ParameterServerService>();
        app.MapTelemetryEndpoints();
        await app.StartAsync(cancellationToken);

        string url = options.AdvertiseUrl ?? UrlOf(grpcListen!);
        string httpUrl = UrlOf(httpListen!);
        var host = new ParameterServerHost(app, url, httpUrl, app.Services.GetRequiredService<ParameterStore>());
        if (options.CoordinatorUrl is not null)
        {
            try { await RegisterAsync(options, url, httpUrl, cancellationToken); }
            catch { await host.DisposeAsync(); throw; }
        }
        return host;
    }

    private static string UrlOf(ListenOptions listen) => $"http://{listen.IPEndPoint!.Address}:{listen.IPEndPoint.Port}";

    private static async Task RegisterAsync(ParameterServerOptions options, string url, string httpUrl, CancellationToken cancellationToken)
    {
        using var channel = GrpcChannel.ForAddress(options.CoordinatorUrl!);
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
