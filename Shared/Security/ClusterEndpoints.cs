using System.Security.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;

namespace Cluster.Shared.Security;

/// <summary>
/// Server side of <see cref="ClusterSecurity"/>: TLS (and mutual TLS for members) on Kestrel
/// listeners, and the secret check in front of every request, gRPC or HTTP.
/// </summary>
public static class ClusterEndpoints
{
    /// <summary>Turns on TLS for a listener when certificates are given; members' endpoints may require client certificates.</summary>
    public static void Secure(ListenOptions listen, ClusterSecurity security, bool memberEndpoint)
    {
        if (security.Certificate is null) return;
        listen.UseHttps(https =>
        {
            https.ServerCertificate = security.Certificate;
            https.SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13;
            if (memberEndpoint && security.RequireMemberCertificates && security.CertificateAuthority is { } authority)
            {
                https.ClientCertificateMode = ClientCertificateMode.RequireCertificate;
                https.ClientCertificateValidation = (certificate, _, _) => CertificateFactory.IsSignedBy(certificate, authority, forClient: true);
            }
        });
    }

    /// <summary>"https" when the listener serves TLS, else "http".</summary>
    public static string Scheme(ClusterSecurity security) => security.ServesTls ? "https" : "http";

    /// <summary>
    /// Rejects every request that lacks the cluster secret, before routing reaches any endpoint
    /// (so endpoints added later are covered too): gRPC calls get status Unauthenticated, HTTP
    /// requests 401. Must be the first middleware of the pipeline. The dashboard's page shell and
    /// the health probes (<see cref="Health.HealthProbes"/>), which hold no data, are exempt.
    /// </summary>
    public static IApplicationBuilder RequireClusterSecret(this IApplicationBuilder app, ClusterSecret secret) =>
        app.Use(async (context, next) =>
        {
            if (IsPublicPageShell(context.Request) || Health.HealthProbes.IsProbe(context.Request) || secret.Matches(context.Request.Headers.Authorization.Count == 1 ? context.Request.Headers.Authorization[0] : null))
            {
                await next(context);
                return;
            }
            bool present = context.Request.Headers.Authorization.Count > 0;
            string message = present
                ? "the cluster secret presented is wrong"
                : "no cluster secret presented; send 'authorization: Bearer SECRET' (the CLI takes --secret, --secret-file or CLUSTER_SECRET)";
            if (context.Request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) == true)
            {
                // A trailers-only gRPC answer: HTTP 200 with the status in the headers.
                context.Response.StatusCode = StatusCodes.Status200OK;
                context.Response.ContentType = "application/grpc";
                context.Response.Headers["grpc-status"] = "16"; // UNAUTHENTICATED
                context.Response.Headers["grpc-message"] = Uri.EscapeDataString(message);
                return;
            }
            context.Response.StatusCode = StatusCodes.Status401Unauthorized;
            context.Response.Headers.WWWAuthenticate = "Bearer realm=\"cluster\"";
            await context.Response.WriteAsJsonAsync(new { errors = new[] { "authorization: " + message } });
        });

    /// <summary>
    /// The dashboard's page shell (its HTML, script and style, which hold no data) loads without
    /// the secret, so that a browser can show the login form; everything it then fetches (the
    /// API, the event streams, metrics) needs the secret like any other request.
    /// </summary>
    public static bool IsPublicPageShell(HttpRequest request) =>
        HttpMethods.IsGet(request.Method) &&
        (request.Path == "/" || (request.Path.StartsWithSegments("/dashboard", out var rest) && rest.HasValue && rest.Value!.Count(c => c == '/') == 1));
}
