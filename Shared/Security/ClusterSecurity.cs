using System.Net;
using System.Security.Cryptography.X509Certificates;

namespace Cluster.Shared.Security;

/// <summary>
/// How one process of the cluster proves itself and checks its peers: the cluster secret
/// (always), and optionally TLS with certificates of the cluster's CA. A host serves TLS when
/// <see cref="Certificate"/> is set; a client trusts only <see cref="CertificateAuthority"/>
/// when it is set (else the system's roots) and presents <see cref="Certificate"/> to members
/// that ask for it. See SECURITY.md.
/// </summary>
public sealed record ClusterSecurity
{
    /// <summary>The shared secret required on every call.</summary>
    public required ClusterSecret Secret { get; init; }

    /// <summary>This member's certificate with its private key: served by hosts, presented as client certificate.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>The cluster's CA: the only root peers' certificates may chain to; null: the system's roots.</summary>
    public X509Certificate2? CertificateAuthority { get; init; }

    /// <summary>Mutual TLS on member endpoints (gRPC): a member must present a certificate signed by the CA.</summary>
    public bool RequireMemberCertificates { get; init; }

    /// <summary>
    /// Serve or connect without TLS beyond loopback. Gives up confidentiality and integrity on
    /// the network: the secret, job specs, gradients and weights travel readable and alterable.
    /// </summary>
    public bool AllowPlaintext { get; init; }

    /// <summary>Whether hosts serve TLS.</summary>
    public bool ServesTls => Certificate is not null;

    /// <summary>Problems with serving on <paramref name="bindAddress"/> with these settings.</summary>
    public IEnumerable<string> ValidateServing(string bindAddress)
    {
        if (Certificate is { HasPrivateKey: false })
            yield return "tls: the certificate has no private key; expected member.crt with member.key";
        if (RequireMemberCertificates && (Certificate is null || CertificateAuthority is null))
            yield return "mtls: needs TLS certificates and the cluster CA (--tls-dir)";
        if (Certificate is null && !AllowPlaintext && IPAddress.TryParse(bindAddress, out var address) && !IPAddress.IsLoopback(address))
            yield return $"bind: {bindAddress} is not a loopback address and no TLS certificates were given; " +
                "give --tls-dir (make one with `cluster certs`), or --allow-plaintext to accept that the secret and all traffic cross the network unencrypted";
    }

    /// <summary>Throws when the secret would cross the network in plain text to <paramref name="url"/>.</summary>
    public void CheckCanConnect(string url, string peer)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"{peer}: '{url}' is not an address; expected http://HOST:PORT or https://HOST:PORT");
        if (uri.Scheme == Uri.UriSchemeHttp && !AllowPlaintext && !uri.IsLoopback)
            throw new ArgumentException(
                $"{peer}: {url} is plain http to another machine, which would send the cluster secret unencrypted; " +
                "use https (serve with --tls-dir), or pass --allow-plaintext to accept that");
    }

    /// <summary>Loads ca.crt, member.crt and member.key (PEM) from a directory made by `cluster certs`.</summary>
    public static (X509Certificate2 Member, X509Certificate2 Authority) LoadDirectory(string directory)
    {
        string ca = Path.Combine(directory, CertificateFactory.AuthorityFile);
        string cert = Path.Combine(directory, CertificateFactory.MemberFile);
        string key = Path.Combine(directory, CertificateFactory.MemberKeyFile);
        foreach (string path in new[] { ca, cert, key })
            if (!File.Exists(path))
                throw new ArgumentException($"tls-dir: {path} does not exist; expected {CertificateFactory.AuthorityFile}, {CertificateFactory.MemberFile} and {CertificateFactory.MemberKeyFile} (`cluster certs` makes them)");
        try
        {
            return (X509Certificate2.CreateFromPemFile(cert, key), X509CertificateLoader.LoadCertificateFromFile(ca));
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException($"tls-dir: {directory} holds no usable certificate and key ({e.Message})", e);
        }
    }
}
