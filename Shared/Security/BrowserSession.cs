using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Cluster.Shared.Security;

/// <summary>
/// Browser log-in for the HTTP endpoints (the dashboard above all): whoever posts the cluster
/// secret to <c>/login</c> gets a session cookie, so that the pages, scripts and event streams a
/// browser loads carry proof of the secret without the secret itself. The token is
/// <c>v1.EXPIRY.MAC</c>: the expiry in Unix seconds and an HMAC-SHA256 of it keyed with the
/// secret. Nothing is stored on the server; a token expires after <see cref="Lifetime"/>, and
/// changing the cluster secret invalidates every token.
/// </summary>
public static class BrowserSession
{
    public const string CookieName = "cluster-session";
    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(12);
    private const string Version = "v1";
    private const int TokenLengthMax = 128;

    /// <summary>A token valid until <paramref name="expiresAt"/>.</summary>
    public static string Issue(ClusterSecret secret, DateTimeOffset expiresAt)
    {
        string expiry = expiresAt.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        return $"{Version}.{expiry}.{Base64Url(Mac(secret, expiry))}";
    }

    /// <summary>Whether a cookie value is a token of this secret that has not expired (constant time in the MAC).</summary>
    public static bool IsValid(ClusterSecret secret, string? token, DateTimeOffset now)
    {
        if (token is null || token.Length > TokenLengthMax) return false;
        var parts = token.Split('.');
        if (parts.Length != 3 || parts[0] != Version) return false;
        if (!long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long expiry)) return false;
        if (expiry <= now.ToUnixTimeSeconds()) return false;
        byte[] presented;
        try { presented = Convert.FromBase64String(FromBase64Url(parts[2])); }
        catch (FormatException) { return false; }
        return CryptographicOperations.FixedTimeEquals(presented, Mac(secret, parts[1]));
    }

    private static byte[] Mac(ClusterSecret secret, string expiry) =>
        HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret.Value), Encoding.UTF8.GetBytes("cluster-browser-session:" + expiry));

    private static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static string FromBase64Url(string text)
    {
        string padded = text.Replace('-', '+').Replace('_', '/');
        return padded + new string('=', (4 - padded.Length % 4) % 4);
    }
}
