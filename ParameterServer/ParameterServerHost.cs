using System.Net;
using Cluster.ParameterServer.Services;
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
}

/// <summary>Starts the parameter server's gRPC endpoint and registers it with the coordinator.</summary>
public sealed class ParameterServerHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ParameterServerHost(WebApplication app, string url, ParameterStore store) => (_app, Url, Store) = (app, url, store);

    /// <summary>The gRPC address the server advertises.</summary>
    public string Url { get; }

    public ParameterStore Store { get; }

    public static async Task<ParameterServerHost> StartAsync(ParameterServerOptions options, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Parse(options.BindAddress), options.Port, listen => listen.Protocols = HttpProtocols.Http2);
            // Gradients arrive as long streams: flow-control windows of a few MiB keep the socket busy.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 << 20;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 << 20;
        });
        builder.Services.AddGrpc(grpc => grpc.MaxReceiveMessageSize = 4 << 20);
        builder.Services.AddSingleton<ParameterStore>();
        var app = builder.Build();
        app.MapGrpcService<ParameterServerService>();
        await app.StartAsync(cancellationToken);

        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        string url = options.AdvertiseUrl ?? bound;
        var host = new ParameterServerHost(app, url, app.Services.GetRequiredService<ParameterStore>());
        if (options.CoordinatorUrl is not null)
        {
            try { await RegisterAsync(options, url, cancellationToken); }
            catch { await host.DisposeAsync(); throw; }
        }
        return host;
    }

    private static async Task RegisterAsync(ParameterServerOptions options, string url, CancellationToken cancellationToken)
    {
        using var channel = GrpcChannel.ForAddress(options.CoordinatorUrl!);
        var coordinator = new Coordinator.CoordinatorClient(channel);
        await Reconnect.UntilAsync("coordinator", options.CoordinatorUrl!, options.ConnectTimeout,
            deadline => coordinator.RegisterParameterServerAsync(
                new RegisterParameterServerRequest { Address = url }, deadline: deadline, cancellationToken: cancellationToken).ResponseAsync,
            cancellationToken);
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
