using System.Net;

namespace Cluster.Shared.Security;

/// <summary>
/// The page a browser gets, as the body of a 401, when it asks for any page without the cluster
/// secret: a form that posts the secret to <c>/login</c> and then returns to the page asked for.
/// It holds no data of the cluster.
/// </summary>
public static class LoginPage
{
    /// <summary>The page; <paramref name="message"/> says why it is shown, <paramref name="returnPath"/> is where a successful log-in goes.</summary>
    public static string Render(string message, string returnPath) => $$"""
        <!doctype html>
        <html lang="en">
        <head>
          <meta charset="utf-8">
          <meta name="viewport" content="width=device-width, initial-scale=1">
          <title>Cluster — log in</title>
          <style>
            body { font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
            section { max-width: 26rem; margin: 12vh auto; background: #fff; border: 1px solid #d8dce3; border-radius: 8px; padding: 1.5rem 2rem; }
            h1 { font-size: 1.25rem; margin-top: 0; }
            input { width: 100%; box-sizing: border-box; padding: .45rem; margin: .35rem 0 1rem; font: inherit; }
            button { padding: .45rem 1.2rem; font: inherit; }
            .reason { color: #8a2a2a; font-size: .9rem; }
          </style>
        </head>
        <body>
          <section id="login">
            <h1>Cluster</h1>
            <p class="reason" id="login-reason">{{WebUtility.HtmlEncode(message)}}</p>
            <form id="login-form" method="post" action="/login">
              <input type="hidden" name="return" value="{{WebUtility.HtmlEncode(returnPath)}}">
              <label for="login-secret">Cluster secret</label>
              <input id="login-secret" name="secret" type="password" autocomplete="current-password" required autofocus>
              <button type="submit">Log in</button>
            </form>
          </section>
        </body>
        </html>
        """;

    /// <summary>A path on this server to return to after log-in: a local absolute path, else "/".</summary>
    public static string SafeReturnPath(string? path) =>
        path is { Length: > 0 and <= 2048 } && path[0] == '/' && !path.StartsWith("//", StringComparison.Ordinal) && !path.Contains('\\', StringComparison.Ordinal)
            && path.All(c => c > ' ' && c <= '~')
            ? path
            : "/";
}
