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
    /// requests 401. Must be the first middleware of the pipeline. A request proves the secret
    /// with <c>authorization: Bearer SECRET</c> or, from a browser, with the session cookie that
    /// <c>POST /login</c> sets (see <see cref="BrowserSession"/>); a browser asking for a page
    /// without either gets the log-in form as the body of the 401. The health probes
    /// (<see cref="Health.HealthProbes"/>), which hold no data, are exempt.
    /// </summary>
    public static IApplicationBuilder RequireClusterSecret(this IApplicationBuilder app, ClusterSecret secret, TimeProvider? time = null)
    {
        var clock = time ?? TimeProvider.System;
        return app.Use(async (context, next) =>
        {
            var request = context.Request;
            if (Health.HealthProbes.IsProbe(request))
            {
                await next(context);
                return;
            }
            if (HttpMethods.IsPost(request.Method) && request.Path == LoginPath)
            {
                await LogInAsync(context, secret, clock);
                return;
            }
            bool bearer = secret.Matches(request.Headers.Authorization.Count == 1 ? request.Headers.Authorization[0] : null);
            bool session = !bearer && BrowserSession.IsValid(secret, request.Cookies[BrowserSession.CookieName], clock.GetUtcNow());
            if (bearer || session)
            {
                if (HttpMethods.IsPost(request.Method) && request.Path == LogoutPath)
                {
                    context.Response.Cookies.Delete(BrowserSession.CookieName, SessionCookie(request, clock));
                    context.Response.Redirect("/");
                    return;
                }
                await next(context);
                return;
            }
            bool present = request.Headers.Authorization.Count > 0 || request.Cookies.ContainsKey(BrowserSession.CookieName);
            string message = present
                ? "the cluster secret presented is wrong"
                : "no cluster secret presented; send 'authorization: Bearer SECRET' (the CLI takes --secret, --secret-file or CLUSTER_SECRET)";
            if (request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) == true)
            {
                // A trailers-only gRPC answer: HTTP 200 with the status in the headers.
                context.Response.StatusCode = StatusCodes.Status200OK;
                context.Response.ContentType = "application/grpc";
                context.Response.Headers["grpc-status"] = "16"; // UNAUTHENTICATED
                context.Response.Headers["grpc-message"] = Uri.EscapeDataString(message);
                return;
            }
            await RefuseAsync(context, "authorization: " + message, present ? "Your session has expired or the cluster secret has changed: log in again." : "Log in with the cluster secret.");
        });
    }

    /// <summary>Where a browser posts the secret (form field <c>secret</c>, optional <c>return</c> path).</summary>
    public const string LoginPath = "/login";
    /// <summary>Ends a browser session (POST).</summary>
    public const string LogoutPath = "/logout";
    private const int LoginFormBytesMax = 4096;

    private static async Task LogInAsync(HttpContext context, ClusterSecret secret, TimeProvider clock)
    {
        var request = context.Request;
        if (!request.HasFormContentType || request.ContentLength is null or > LoginFormBytesMax)
        {
            string error = $"authorization: a log-in is a form post (application/x-www-form-urlencoded) of at most {LoginFormBytesMax} bytes with the field 'secret'";
            await RefuseAsync(context, error, error);
            return;
        }
        var form = await request.ReadFormAsync(context.RequestAborted);
        string returnPath = LoginPage.SafeReturnPath(form["return"].Count == 1 ? form["return"][0] : null);
        string? presented = form["secret"].Count == 1 ? form["secret"][0] : null;
        if (presented is null || !secret.Matches("Bearer " + presented))
        {
            await RefuseAsync(context, presented is null ? "authorization: no cluster secret presented" : "authorization: the cluster secret presented is wrong",
                presented is null ? "Log in with the cluster secret." : "That is not the cluster secret.", returnPath);
            return;
        }
        var expiresAt = clock.GetUtcNow() + BrowserSession.Lifetime;
        var cookie = SessionCookie(request, clock);
        cookie.Expires = expiresAt;
        context.Response.Cookies.Append(BrowserSession.CookieName, BrowserSession.Issue(secret, expiresAt), cookie);
        context.Response.StatusCode = StatusCodes.Status303SeeOther;
        context.Response.Headers.Location = returnPath;
    }

    /// <summary>The cookie can be read by no script, is never sent by other sites' requests, and over TLS only when the log-in came over TLS.</summary>
    private static CookieOptions SessionCookie(HttpRequest request, TimeProvider clock) => new()
    {
        HttpOnly = true,
        SameSite = SameSiteMode.Strict,
        Secure = request.IsHttps,
        Path = "/",
        MaxAge = BrowserSession.Lifetime,
        Expires = clock.GetUtcNow() + BrowserSession.Lifetime,
    };

    /// <summary>A 401: the log-in form for a browser that asks for a page, JSON errors for everything else.</summary>
    private static async Task RefuseAsync(HttpContext context, string error, string browserReason, string? returnPath = null)
    {
        var request = context.Request;
        context.Response.StatusCode = StatusCodes.Status401Unauthorized;
        context.Response.Headers.WWWAuthenticate = "Bearer realm=\"cluster\"";
        bool browser = request.Headers.Accept.Any(a => a?.Contains("text/html", StringComparison.OrdinalIgnoreCase) == true);
        if (browser && (HttpMethods.IsGet(request.Method) || request.Path == LoginPath))
        {
            context.Response.ContentType = "text/html; charset=utf-8";
            await context.Response.WriteAsync(LoginPage.Render(browserReason, returnPath ?? LoginPage.SafeReturnPath(request.Path + request.QueryString)));
            return;
        }
        await context.Response.WriteAsJsonAsync(new { errors = new[] { error } });
    }
}
