using Cluster.Shared.Security;

namespace Cluster.Tests.Unit.Security;

[Trait("Tier", "unit")]
public sealed class BrowserSessionTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 27, 12, 0, 0, TimeSpan.Zero);
    private readonly ClusterSecret _secret = ClusterSecret.Generate();

    [Fact]
    public void A_token_is_valid_until_it_expires_and_does_not_contain_the_secret()
    {
        string token = BrowserSession.Issue(_secret, Now + BrowserSession.Lifetime);
        Assert.DoesNotContain(_secret.Value, token, StringComparison.Ordinal);
        Assert.True(BrowserSession.IsValid(_secret, token, Now));
        Assert.True(BrowserSession.IsValid(_secret, token, Now + BrowserSession.Lifetime - TimeSpan.FromSeconds(1)));
        Assert.False(BrowserSession.IsValid(_secret, token, Now + BrowserSession.Lifetime));
    }

    [Fact]
    public void A_token_of_another_secret_or_with_a_changed_expiry_or_mac_is_refused()
    {
        string token = BrowserSession.Issue(_secret, Now + TimeSpan.FromHours(1));
        Assert.False(BrowserSession.IsValid(ClusterSecret.Generate(), token, Now));
        var parts = token.Split('.');
        string later = $"{parts[0]}.{long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) + 3600}.{parts[2]}";
        Assert.False(BrowserSession.IsValid(_secret, later, Now));
        string otherMac = $"{parts[0]}.{parts[1]}.{(parts[2][0] == 'A' ? 'B' : 'A')}{parts[2][1..]}";
        Assert.False(BrowserSession.IsValid(_secret, otherMac, Now));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("v1")]
    [InlineData("v1..")]
    [InlineData("v1.-5.AAAA")]
    [InlineData("v2.99999999999.AAAA")]
    [InlineData("v1.99999999999.@@@@")]
    [InlineData("v1.99999999999.AAAA.extra")]
    [InlineData("v1.99999999999999999999999.AAAA")]
    public void Malformed_tokens_are_refused_without_an_exception(string? token) =>
        Assert.False(BrowserSession.IsValid(_secret, token, Now));

    [Fact]
    public void A_token_longer_than_any_real_one_is_refused() =>
        Assert.False(BrowserSession.IsValid(_secret, "v1.99999999999." + new string('A', 10_000), Now));

    [Theory]
    [InlineData("/", "/")]
    [InlineData("/api/jobs?x=1", "/api/jobs?x=1")]
    [InlineData("//evil.example/", "/")]
    [InlineData("https://evil.example/", "/")]
    [InlineData("/\\evil.example", "/")]
    [InlineData("/a b", "/")]
    [InlineData(null, "/")]
    [InlineData("", "/")]
    public void Log_in_returns_only_to_a_local_path(string? path, string expected) =>
        Assert.Equal(expected, LoginPage.SafeReturnPath(path));

    [Fact]
    public void The_log_in_page_escapes_what_it_echoes()
    {
        string page = LoginPage.Render("<script>", "/\"><script>");
        Assert.DoesNotContain("<script>", page, StringComparison.Ordinal);
        Assert.Contains("&lt;script&gt;", page, StringComparison.Ordinal);
    }
}
