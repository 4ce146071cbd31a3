using System.CommandLine;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Cluster.Shared.Security;

namespace Cluster.Cli.Commands;

/// <summary>
/// `cluster probe URL`: a health check for container engines whose images carry no HTTP client
/// (Docker's HEALTHCHECK). Sends no secret: the health routes are the ones served without it.
/// Exits 0 when the answer is 2xx, 1 otherwise.
/// </summary>
public static class ProbeCommand
{
    public static Command Create()
    {
        var url = new Argument<string>("url") { Description = "The probe to call, e.g. http://127.0.0.1:5080/readyz" };
        var authority = new Option<string?>("--ca") { Description = $"https: trust only this CA certificate (e.g. certs/{CertificateFactory.AuthorityFile}); default: the system's roots" };
        var timeout = new Option<double>("--timeout") { Description = "Seconds to wait for the answer", DefaultValueFactory = _ => 5.0 };
        var command = new Command("probe", "Call a role's health probe (/healthz or /readyz) and exit 0 when it answers 2xx") { url, authority, timeout };
        command.SetAction(async (parse, cancellationToken) =>
        {
            string target = parse.GetValue(url)!;
            if (!Uri.TryCreate(target, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
                throw new Api.CliException($"url: '{target}' is not an address; expected http://HOST:PORT/healthz or https://HOST:PORT/readyz", exitCode: 2);
            double seconds = parse.GetValue(timeout);
            if (seconds is <= 0 or > 300) throw new Api.CliException($"timeout: {seconds} is out of range; expected more than 0 and at most 300 seconds", exitCode: 2);
            using var handler = new SocketsHttpHandler();
            if (parse.GetValue(authority) is { } caFile)
            {
                if (!File.Exists(caFile)) throw new Api.CliException($"ca: {caFile} does not exist; expected the cluster CA's certificate ({CertificateFactory.AuthorityFile})", exitCode: 2);
                var ca = X509CertificateLoader.LoadCertificateFromFile(caFile);
                handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                    certificate is not null && !errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch) &&
                    CertificateFactory.IsSignedBy(X509CertificateLoader.LoadCertificate(certificate.GetRawCertData()), ca, forClient: false);
            }
            using var http = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(seconds) };
            try
            {
                using var response = await http.GetAsync(uri, cancellationToken);
                Console.WriteLine($"{(int)response.StatusCode} {(await response.Content.ReadAsStringAsync(cancellationToken)).Trim()}");
                return response.IsSuccessStatusCode ? 0 : 1;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                await Console.Error.WriteLineAsync($"error: {target} did not answer ({e.Message})");
                return 1;
            }
        });
        return command;
    }
}
