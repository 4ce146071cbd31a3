using System.Security.Cryptography;
using System.Text;

namespace Cluster.Shared.Security;

/// <summary>
/// The shared secret every member and client of a cluster presents on every call, as
/// <c>authorization: Bearer SECRET</c>. Compared in constant time over SHA-256 digests, so
/// neither the content nor the length of the expected secret leaks through timing. Its
/// <see cref="ToString"/> never shows the value, so it cannot end up in a log by accident.
/// </summary>
public sealed class ClusterSecret
{
    public const int LengthMin = 16;
    public const int LengthMax = 1024;
    /// <summary>Environment variable the role commands read the secret from.</summary>
    public const string EnvironmentVariable = "CLUSTER_SECRET";
    private const string Scheme = "Bearer ";

    private readonly byte[] _digest;

    private ClusterSecret(string value)
    {
        Value = value;
        _digest = SHA256.HashData(Encoding.UTF8.GetBytes(value));
    }

    /// <summary>The secret itself: only for sending it, never for printing it.</summary>
    public string Value { get; }

    /// <summary>The value of the authorization header that carries this secret.</summary>
    public string AuthorizationHeader => Scheme + Value;

    /// <summary>A new random secret: 32 bytes from the OS's CSPRNG, base64url (43 characters).</summary>
    public static ClusterSecret Generate() =>
        new(Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_'));

    /// <summary>Checks length and characters; the message names what is wrong without echoing the secret.</summary>
    public static ClusterSecret Parse(string value, string source)
    {
        value = value.Trim();
        if (value.Length < LengthMin)
            throw new ArgumentException($"secret ({source}): {value.Length} characters; expected at least {LengthMin} (`cluster secret` prints a new random one)");
        if (value.Length > LengthMax)
            throw new ArgumentException($"secret ({source}): {value.Length} characters; expected at most {LengthMax}");
        if (value.Any(c => c <= ' ' || c > '~'))
            throw new ArgumentException($"secret ({source}): contains spaces, control or non-ASCII characters; expected printable ASCII");
        return new ClusterSecret(value);
    }

    /// <summary>
    /// The secret from, in this order: the option's value, the file, the environment variable.
    /// Null when none is given.
    /// </summary>
    public static ClusterSecret? Resolve(string? optionValue, string? filePath, string? environmentValue)
    {
        if (!string.IsNullOrEmpty(optionValue)) return Parse(optionValue, "--secret");
        if (!string.IsNullOrEmpty(filePath))
        {
            string text;
            try { text = File.ReadAllText(filePath); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new ArgumentException($"secret-file: {filePath} cannot be read ({e.Message})", e);
            }
            return Parse(text, filePath);
        }
        if (!string.IsNullOrEmpty(environmentValue)) return Parse(environmentValue, EnvironmentVariable);
        return null;
    }

    /// <summary>Whether an authorization header carries this secret (constant time in the header's content).</summary>
    public bool Matches(string? authorizationHeader)
    {
        if (authorizationHeader is null || authorizationHeader.Length > Scheme.Length + LengthMax) return false;
        bool bearer = authorizationHeader.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);
        var presented = SHA256.HashData(Encoding.UTF8.GetBytes(bearer ? authorizationHeader[Scheme.Length..] : authorizationHeader));
        return CryptographicOperations.FixedTimeEquals(presented, _digest) && bearer;
    }

    /// <summary>Writes the secret to a new file that only the current user can read.</summary>
    public void WriteTo(string path)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using var file = new FileStream(path, options);
        file.Write(Encoding.UTF8.GetBytes(Value + "\n"));
    }

    public override string ToString() => "ClusterSecret(hidden)";
}
