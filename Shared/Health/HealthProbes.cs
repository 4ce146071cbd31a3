using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Cluster.Shared.Health;

/// <summary>
/// Whether a role can take work now. A role starts not ready, becomes ready once it has done
/// what it needs before serving (the coordinator: listening; a parameter server or worker:
/// registered with the coordinator) and stops being ready when it begins to shut down, so that
/// an orchestrator stops routing to it while it drains.
/// </summary>
public sealed class Readiness
{
    private volatile bool _ready;

    public bool IsReady => _ready;

    public void MarkReady() => _ready = true;

    public void MarkNotReady() => _ready = false;
}

/// <summary>
/// Liveness and readiness probes on a role's HTTP listener: <c>GET /healthz</c> answers 200
/// while the process serves requests; <c>GET /readyz</c> answers 200 when the role is ready and
/// 503 otherwise. They are the only data-free routes served without the cluster secret (see
/// SECURITY.md): their bodies are one fixed word, so that an orchestrator's probe needs no
/// credentials and learns nothing but up or down.
/// </summary>
public static class HealthProbes
{
    public const string LivenessPath = "/healthz";
    public const string ReadinessPath = "/readyz";

    /// <summary>Whether a request is a health probe (GET of one of the two paths, nothing else).</summary>
    public static bool IsProbe(HttpRequest request) =>
        (HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method)) &&
        (request.Path == LivenessPath || request.Path == ReadinessPath);

    /// <summary>Maps both probes; readiness ends when the application begins to stop.</summary>
    public static void MapHealthProbes(this WebApplication app, Readiness readiness)
    {
        app.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.Register(readiness.MarkNotReady);
        app.MapMethods(LivenessPath, [HttpMethods.Get, HttpMethods.Head], () => Results.Text("ok\n"));
        app.MapMethods(ReadinessPath, [HttpMethods.Get, HttpMethods.Head], () => readiness.IsReady
            ? Results.Text("ready\n")
            : Results.Text("not ready\n", statusCode: StatusCodes.Status503ServiceUnavailable));
    }
}
