using System.CommandLine;
using Cluster.Cli.Api;
using Cluster.Shared.Security;

namespace Cluster.Cli.Commands;

/// <summary>
/// How every command gets the cluster secret (--secret, --secret-file, or the environment
/// variable CLUSTER_SECRET, in that order) and its TLS settings. The one place the CLI reads
/// the secret from the environment.
/// </summary>
public sealed class SecurityOptions
{
    public Option<string?> Secret { get; } = new("--secret")
    {
        Description = $"The cluster secret (at least {ClusterSecret.LengthMin} characters). Visible to other users in the process list: prefer --secret-file or {ClusterSecret.EnvironmentVariable}",
    };
    public Option<string?> SecretFile { get; } = new("--secret-file") { Description = $"File holding the cluster secret (default: the {ClusterSecret.EnvironmentVariable} environment variable)" };
    public Option<string?> TlsDirectory { get; } = new("--tls-dir")
    {
        Description = $"Directory with {CertificateFactory.AuthorityFile}, {CertificateFactory.MemberFile} and {CertificateFactory.MemberKeyFile} (made by `cluster certs`): serve TLS, trust only this CA",
    };
    public Option<bool> MutualTls { get; } = new("--mtls") { Description = "Mutual TLS: members must present a certificate signed by the cluster CA (needs --tls-dir)" };
    public Option<bool> AllowPlaintext { get; } = new("--allow-plaintext")
    {
        Description = "Allow plain HTTP beyond loopback. Gives up encryption and server authentication: the secret, job specs, gradients and weights cross the network readable and alterable by anyone on the path",
    };

    public void AddTo(Command command)
    {
        foreach (Option option in new Option[] { Secret, SecretFile, TlsDirectory, MutualTls, AllowPlaintext })
            command.Options.Add(option);
    }

    /// <summary>The command's security settings; without a secret: a generated one when allowed, else an error.</summary>
    public ClusterSecurity Read(ParseResult parse, bool generateWhenMissing = false)
    {
        ClusterSecret? secret;
        try
        {
            secret = ClusterSecret.Resolve(parse.GetValue(Secret), parse.GetValue(SecretFile), Environment.GetEnvironmentVariable(ClusterSecret.EnvironmentVariable));
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message, exitCode: 2);
        }
        if (secret is null && !generateWhenMissing)
            throw new CliException(
                $"secret: none given; every member and client of a cluster needs its secret: --secret-file FILE, {ClusterSecret.EnvironmentVariable}=SECRET or --secret SECRET (`cluster secret` prints a new one)",
                exitCode: 2);
        var security = new ClusterSecurity
        {
            Secret = secret ?? ClusterSecret.Generate(),
            RequireMemberCertificates = parse.GetValue(MutualTls),
            AllowPlaintext = parse.GetValue(AllowPlaintext),
        };
        if (parse.GetValue(TlsDirectory) is not { } directory) return security;
        try
        {
            var (member, authority) = ClusterSecurity.LoadDirectory(directory);
            return security with { Certificate = member, CertificateAuthority = authority };
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message, exitCode: 2);
        }
    }

    /// <summary>The arguments that give a child role the same TLS settings (the secret travels in its environment).</summary>
    public IEnumerable<string> ChildArguments(ParseResult parse)
    {
        if (parse.GetValue(TlsDirectory) is { } directory) { yield return "--tls-dir"; yield return Path.GetFullPath(directory); }
        if (parse.GetValue(MutualTls)) yield return "--mtls";
    }
}
