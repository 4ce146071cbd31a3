using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Cluster.Shared.Security;

/// <summary>
/// Makes a self-signed development CA and one member certificate signed by it (ECDSA P-256,
/// PEM files), with nothing but System.Security.Cryptography. The member certificate names
/// the given hosts plus localhost, 127.0.0.1 and ::1, and is valid both for serving (server
/// auth) and for mutual TLS (client auth), so one file set serves every role.
/// </summary>
public static class CertificateFactory
{
    public const string AuthorityFile = "ca.crt";
    public const string AuthorityKeyFile = "ca.key";
    public const string MemberFile = "member.crt";
    public const string MemberKeyFile = "member.key";

    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    /// <summary>A CA certificate with its private key.</summary>
    public static X509Certificate2 CreateAuthority(string name, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddMinutes(-5), now + validity);
    }

    /// <summary>A member certificate for <paramref name="hosts"/>, signed by <paramref name="authority"/>, with its private key.</summary>
    public static X509Certificate2 CreateMember(X509Certificate2 authority, IEnumerable<string> hosts, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=cluster member", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ServerAuth, ClientAuth], critical: false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        var names = new SubjectAlternativeNameBuilder();
        foreach (string host in hosts.Concat(["localhost", "127.0.0.1", "::1"]).Distinct(StringComparer.OrdinalIgnoreCase))
        {
            if (IPAddress.TryParse(host, out var ip)) names.AddIpAddress(ip);
            else names.AddDnsName(host);
        }
        request.CertificateExtensions.Add(names.Build());
        var now = DateTimeOffset.UtcNow;
        var notAfter = now + validity < authority.NotAfter ? now + validity : authority.NotAfter;
        using var signed = request.Create(authority, now.AddMinutes(-5), notAfter, RandomNumberGenerator.GetBytes(16));
        return signed.CopyWithPrivateKey(key);
    }

    /// <summary>Writes ca.crt, ca.key, member.crt and member.key into <paramref name="directory"/>; keys are readable by the owner only.</summary>
    public static void WriteDevelopmentSet(string directory, IEnumerable<string> hosts, TimeSpan validity)
    {
        foreach (string host in hosts)
            if (Uri.CheckHostName(host) == UriHostNameType.Unknown)
                throw new ArgumentException($"host: '{host}' is not a host name or IP address");
        Directory.CreateDirectory(directory);
        using var authority = CreateAuthority("Cluster development CA", validity);
        using var member = CreateMember(authority, hosts, validity);
        Write(Path.Combine(directory, AuthorityFile), authority.ExportCertificatePem(), secret: false);
        Write(Path.Combine(directory, AuthorityKeyFile), authority.GetECDsaPrivateKey()!.ExportPkcs8PrivateKeyPem(), secret: true);
        Write(Path.Combine(directory, MemberFile), member.ExportCertificatePem(), secret: false);
        Write(Path.Combine(directory, MemberKeyFile), member.GetECDsaPrivateKey()!.ExportPkcs8PrivateKeyPem(), secret: true);
    }

    private static void Write(string path, string pem, bool secret)
    {
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
            options.UnixCreateMode = secret ? UnixFileMode.UserRead | UnixFileMode.UserWrite
                : UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        using var writer = new StreamWriter(new FileStream(path, options));
        writer.Write(pem);
        writer.Write('\n');
    }

    /// <summary>
    /// Whether <paramref name="certificate"/> chains to <paramref name="authority"/> (and only to it)
    /// and may be used for <paramref name="usage"/> (server or client auth).
    /// </summary>
    public static bool IsSignedBy(X509Certificate2 certificate, X509Certificate2 authority, bool forClient)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(forClient ? ClientAuth : ServerAuth);
        return chain.Build(certificate);
    }
}
