using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;

namespace Cluster.Shared.Security;

/// <summary>
/// Client side of <see cref="ClusterSecurity"/>: every outgoing request carries the secret, and
/// TLS peers are checked against the cluster CA. Used for gRPC channels and the JSON API alike.
/// </summary>
public static class ClusterTransport
{
    /// <summary>Largest message a member accepts from another by default (gRPC's own default).</summary>
    public const int MessageBytesMaxDefault = 4 << 20;

    /// <summary>A gRPC channel to <paramref name="url"/> that authenticates every call.</summary>
    public static GrpcChannel Channel(string url, ClusterSecurity security, string peer, int receiveBytesMax = MessageBytesMaxDefault)
    {
        security.CheckCanConnect(url, peer);
        return GrpcChannel.ForAddress(url, new GrpcChannelOptions
        {
            HttpHandler = Handler(security),
            MaxReceiveMessageSize = receiveBytesMax,
            DisposeHttpClient = true,
        });
    }

    /// <summary>An HTTP client for the JSON API at <paramref name="url"/> that authenticates every request.</summary>
    public static HttpClient HttpClient(string url, ClusterSecurity security, TimeSpan timeout)
    {
        security.CheckCanConnect(url, "api");
        return new HttpClient(Handler(security)) { BaseAddress = new Uri(url.TrimEnd('/') + "/"), Timeout = timeout };
    }

    /// <summary>The handler chain: the secret on every request, over sockets with the cluster's TLS policy.</summary>
    public static HttpMessageHandler Handler(ClusterSecurity security, Action<SocketsHttpHandler>? tune = null)
    {
        var sockets = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        tune?.Invoke(sockets);
        if (security.Certificate is not null)
            sockets.SslOptions.ClientCertificates = [security.Certificate];
        if (security.CertificateAuthority is { } authority)
            sockets.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) => IsTrustedServer(certificate, errors, authority);
        return new SecretHandler(security.Secret, sockets);
    }

    /// <summary>Whether a server presented a certificate for the name asked for, signed by the cluster CA for server use.</summary>
    public static bool IsTrustedServer(X509Certificate? certificate, SslPolicyErrors errors, X509Certificate2 authority)
    {
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch)) return false;
        using var presented = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        return CertificateFactory.IsSignedBy(presented, authority, forClient: false);
    }

    private sealed class SecretHandler(ClusterSecret secret, HttpMessageHandler inner) : DelegatingHandler(inner)
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            request.Headers.TryAddWithoutValidation("authorization", secret.AuthorizationHeader);
            return base.SendAsync(request, cancellationToken);
        }
    }
}
