using Cluster.Shared.Security;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cluster.Worker.AllReduce;

/// <summary>
/// The worker's RingPeer gRPC endpoint (HTTP/2 without TLS), on a port it binds itself (0: any
/// free port). HTTP/2 flow-control windows are raised so that a ring stream is never held
/// back by the receiver's window on loopback or a LAN.
/// </summary>
public sealed class PeerHost : IAsyncDisposable
{
    /// <summary>Receive window per stream and per connection: enough for several 1 MiB chunks in flight.</summary>
    public const int WindowBytes = 64 << 20;
    private readonly WebApplication _app;

    private PeerHost(WebApplication app, PeerInbox inbox, string address, RingDataListener data) => (_app, Inbox, Address, Data) = (app, inbox, address, data);

    public PeerInbox Inbox { get; }
    /// <summary>The address peers call, e.g. "http://127.0.0.1:40123".</summary>
    public string Address { get; }
    /// <summary>The ring data port (raw TCP or TLS) successors connect to for the segments.</summary>
    public RingDataListener Data { get; }

    public static async Task<PeerHost> StartAsync(string bindAddress, int port, string? advertiseHost, ClusterSecurity security, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        Shared.Health.EmbeddedHostLifetime.Use(builder.Services);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        ListenOptions? listen = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Limits.Http2.InitialConnectionWindowSize = WindowBytes;
            kestrel.Limits.Http2.InitialStreamWindowSize = WindowBytes;
            kestrel.Limits.Http2.MaxFrameSize = (1 << 20) + 1024;
            kestrel.Limits.MinRequestBodyDataRate = null;
            kestrel.Listen(IPAddress.Parse(bindAddress), port, l =>
            {
                (listen = l).Protocols = HttpProtocols.Http2;
                ClusterEndpoints.Secure(l, security, memberEndpoint: true);
            });
        });
        var inbox = new PeerInbox();
        builder.Services.AddGrpc(o => o.MaxReceiveMessageSize = 8 << 20);
        builder.Services.AddSingleton(inbox);
        var app = builder.Build();
        app.RequireClusterSecret(security.Secret);
        app.MapGrpcService<RingPeerService>();
        await app.StartAsync(cancellationToken);
        var endpoint = listen!.IPEndPoint!;
        string host = advertiseHost ?? (endpoint.Address.Equals(IPAddress.Any) ? Dns.GetHostName() : endpoint.Address.ToString());
        var data = RingDataListener.Start(bindAddress, 0, host, security);
        return new PeerHost(app, inbox, $"{ClusterEndpoints.Scheme(security)}://{host}:{endpoint.Port}", data);
    }

    public async ValueTask DisposeAsync()
    {
        await Data.DisposeAsync();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
