using Cluster.Shared.Security;

namespace Cluster.Tests.Unit.Security;

[Trait("Tier", "unit")]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class ClusterSecretTests
{
    private static readonly ClusterSecret Secret = ClusterSecret.Parse("correct-horse-battery-staple", "test");

    [Theory]
    [InlineData("Bearer correct-horse-battery-staple", true)]
    [InlineData("bearer correct-horse-battery-staple", true)]
    [InlineData("correct-horse-battery-staple", false)]
    [InlineData("Basic correct-horse-battery-staple", false)]
    [InlineData("Bearer correct-horse-battery-stapl", false)]
    [InlineData("Bearer correct-horse-battery-staplee", false)]
    [InlineData("Bearer Correct-horse-battery-staple", false)]
    [InlineData("Bearer ", false)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Only_the_exact_secret_as_a_bearer_token_matches(string? header, bool matches) =>
        Assert.Equal(matches, Secret.Matches(header));

    [Fact]
    public void A_generated_secret_is_long_random_and_matches_its_own_header_only()
    {
        var a = ClusterSecret.Generate();
        var b = ClusterSecret.Generate();
        Assert.Equal(43, a.Value.Length);
        Assert.NotEqual(a.Value, b.Value);
        Assert.True(a.Matches(a.AuthorizationHeader));
        Assert.False(a.Matches(b.AuthorizationHeader));
        Assert.False(a.Matches("Bearer " + new string('x', 100_000)));
    }

    [Theory]
    [InlineData("short", "secret (test): 5 characters; expected at least 16")]
    [InlineData("has a space in the middle", "secret (test): contains spaces, control or non-ASCII characters")]
    [InlineData("sécret-non-ascii-value", "secret (test): contains spaces, control or non-ASCII characters")]
    public void A_weak_or_malformed_secret_is_refused_without_echoing_it(string value, string expected)
    {
        var error = Assert.Throws<ArgumentException>(() => ClusterSecret.Parse(value, "test"));
        Assert.StartsWith(expected, error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(value, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_secret_never_shows_in_its_string_form() =>
        Assert.DoesNotContain("correct-horse", Secret.ToString(), StringComparison.Ordinal);

    [Fact]
    public void The_option_wins_over_the_file_which_wins_over_the_environment()
    {
        string file = Path.GetTempFileName();
        File.Delete(file);
        try
        {
            ClusterSecret.Parse("from-the-file-0123456789", "t").WriteTo(file);
            Assert.True(ClusterSecret.Resolve("from-the-option-0123456789", file, "from-the-env-0123456789")!.Matches("Bearer from-the-option-0123456789"));
            Assert.True(ClusterSecret.Resolve(null, file, "from-the-env-0123456789")!.Matches("Bearer from-the-file-0123456789"));
            Assert.True(ClusterSecret.Resolve(null, null, "from-the-env-0123456789")!.Matches("Bearer from-the-env-0123456789"));
            Assert.Null(ClusterSecret.Resolve(null, null, null));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            var missing = Assert.Throws<ArgumentException>(() => ClusterSecret.Resolve(null, file + ".missing", null));
            Assert.StartsWith($"secret-file: {file}.missing cannot be read", missing.Message, StringComparison.Ordinal);
        }
        finally { File.Delete(file); }
    }
}

[Trait("Tier", "unit")]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class CertificateTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("certs-test-").FullName;

    [Fact]
    public void The_development_set_loads_and_its_member_is_signed_by_its_ca_only()
    {
        CertificateFactory.WriteDevelopmentSet(_directory, ["node-a.example", "10.1.2.3"], TimeSpan.FromDays(2));
        var (member, authority) = ClusterSecurity.LoadDirectory(_directory);
        using var otherAuthority = CertificateFactory.CreateAuthority("other", TimeSpan.FromDays(1));
        using var stranger = CertificateFactory.CreateMember(otherAuthority, [], TimeSpan.FromDays(1));

        Assert.True(member.HasPrivateKey);
        Assert.True(CertificateFactory.IsSignedBy(member, authority, forClient: true));
        Assert.True(CertificateFactory.IsSignedBy(member, authority, forClient: false));
        Assert.False(CertificateFactory.IsSignedBy(stranger, authority, forClient: true));
        Assert.False(CertificateFactory.IsSignedBy(member, otherAuthority, forClient: true));
        Assert.True(member.MatchesHostname("node-a.example"));
        Assert.True(member.MatchesHostname("10.1.2.3"));
        Assert.True(member.MatchesHostname("127.0.0.1"));
        Assert.False(member.MatchesHostname("node-b.example"));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(_directory, CertificateFactory.MemberKeyFile)));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(_directory, CertificateFactory.AuthorityKeyFile)));
    }

    [Fact]
    public void A_directory_without_the_files_names_what_is_missing()
    {
        var error = Assert.Throws<ArgumentException>(() => ClusterSecurity.LoadDirectory(_directory));
        Assert.Contains("ca.crt does not exist", error.Message, StringComparison.Ordinal);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}

[Trait("Tier", "unit")]
public sealed class PlaintextPolicyTests
{
    private static readonly ClusterSecurity Plain = new() { Secret = ClusterSecret.Generate() };

    [Theory]
    [InlineData("127.0.0.1", false)]
    [InlineData("::1", false)]
    [InlineData("0.0.0.0", true)]
    [InlineData("10.0.0.5", true)]
    public void Serving_plain_http_beyond_loopback_needs_the_explicit_flag(string bind, bool refused)
    {
        Assert.Equal(refused, Plain.ValidateServing(bind).Any());
        Assert.Empty((Plain with { AllowPlaintext = true }).ValidateServing(bind));
    }

    [Theory]
    [InlineData("http://127.0.0.1:5000", false)]
    [InlineData("http://localhost:5000", false)]
    [InlineData("https://10.0.0.5:5000", false)]
    [InlineData("http://10.0.0.5:5000", true)]
    [InlineData("http://coordinator.example:5000", true)]
    public void Sending_the_secret_in_plain_text_to_another_machine_needs_the_explicit_flag(string url, bool refused)
    {
        if (refused)
        {
            var error = Assert.Throws<ArgumentException>(() => Plain.CheckCanConnect(url, "coordinator"));
            Assert.Contains("would send the cluster secret unencrypted", error.Message, StringComparison.Ordinal);
        }
        else Plain.CheckCanConnect(url, "coordinator");
        (Plain with { AllowPlaintext = true }).CheckCanConnect(url, "coordinator");
    }

    [Fact]
    public void Mutual_tls_without_certificates_is_refused() =>
        Assert.Contains("mtls: needs TLS certificates and the cluster CA (--tls-dir)", (Plain with { RequireMemberCertificates = true }).ValidateServing("127.0.0.1"));
}
