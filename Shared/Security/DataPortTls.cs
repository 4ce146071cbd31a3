using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace Cluster.Shared.Security;

/// <summary>
/// TLS on the raw TCP data ports, with the same policy as the gRPC endpoints
/// (<see cref="ClusterEndpoints.Secure"/>, <see cref="ClusterTransport.Handler"/>): the server
/// presents the member certificate and, under --mtls, requires a member certificate signed by
/// the cluster CA; the client checks the server against the CA and presents its own.
/// </summary>
public static class DataPortTls
{
    public static SslServerAuthenticationOptions ServerOptions(ClusterSecurity security, X509Certificate2 certificate)
    {
        var options = new SslServerAuthenticationOptions
        {
            ServerCertificate = certificate,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        };
        if (security.RequireMemberCertificates && security.CertificateAuthority is { } authority)
        {
            options.ClientCertificateRequired = true;
            options.RemoteCertificateValidationCallback = (_, presented, _, _) =>
                presented is not null && CertificateFactory.IsSignedBy(X509CertificateLoader.LoadCertificate(presented.GetRawCertData()), authority, forClient: true);
        }
        return options;
    }

    public static SslClientAuthenticationOptions ClientOptions(ClusterSecurity security, string host)
    {
        var options = new SslClientAuthenticationOptions { TargetHost = host, EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13 };
        if (security.Certificate is { } certificate) options.ClientCertificates = [certificate];
        if (security.CertificateAuthority is { } authority)
            options.RemoteCertificateValidationCallback = (_, presented, _, errors) => ClusterTransport.IsTrustedServer(presented, errors, authority);
        return options;
    }
}
