using System.Net;
using System.Net.Http.Headers;
using System.Reflection;
using Cluster.Coordinator;
using Cluster.ParameterServer;
using Cluster.Shared.Health;
using Cluster.Tests.Integration.Support;
using Google.Protobuf.Reflection;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// Nobody gets in without the cluster secret: every RPC method of every service in the wire
/// contracts (read from the generated descriptors, so a new method is covered the day it is
/// added) and every HTTP endpoint the coordinator maps (read from its endpoint data source)
/// refuses a call without the secret and one with a wrong secret.
/// </summary>
[Trait("Tier", "integration")]
public sealed class AuthenticationCoverageTests : IAsyncLifetime
{
    private static readonly TimeSpan CallDeadline = TimeSpan.FromSeconds(10);
    private CoordinatorHost _coordinator = null!;
    private ParameterServerHost _server = null!;
    private Worker.AllReduce.PeerHost _ringPeer = null!;

    public async Task InitializeAsync()
    {
        _coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        _server = await ParameterServerHost.StartAsync(
            new ParameterServerOptions { CoordinatorUrl = _coordinator.GrpcUrl, Security = TestSecurity.Loopback }, CancellationToken.None);
        // A worker's peer service (scheme allreduce).
        _ringPeer = await Worker.AllReduce.PeerHost.StartAsync("127.0.0.1", 0, null, TestSecurity.Loopback, CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await _ringPeer.DisposeAsync();
        await _server.DisposeAsync();
        await _coordinator.DisposeAsync();
    }

    /// <summary>Every service of every .proto compiled into Cluster.Protos.</summary>
    public static List<ServiceDescriptor> Services() =>
        [.. typeof(Protos.Coordinator).Assembly.GetTypes()
            .Select(type => type.GetProperty("Descriptor", BindingFlags.Public | BindingFlags.Static))
            .Where(property => property?.PropertyType == typeof(FileDescriptor))
            .SelectMany(property => ((FileDescriptor)property!.GetValue(null)!).Services)
            .DistinctBy(service => service.FullName)];

    [Fact]
    public async Task Every_rpc_method_of_every_service_refuses_calls_without_the_secret_or_with_a_wrong_one()
    {
        var methods = Services().SelectMany(s => s.Methods).ToList();
        Assert.Contains(methods, m => m.FullName == "cluster.Coordinator.RegisterWorker");
        Assert.Contains(methods, m => m.FullName == "cluster.ParameterServer.PushGradients");
        string[] hosts = [_coordinator.GrpcUrl, _server.Url, _ringPeer.Address];
        var failures = new List<string>();
        foreach (var method in methods)
        {
            foreach (string host in hosts)
            {
                var (none, noneDetail) = await CallAsync(host, method, authorization: null);
                if (none != StatusCode.Unauthenticated) failures.Add($"{method.FullName} at {host} without a secret: {none} {noneDetail}");
                var (wrong, _) = await CallAsync(host, method, authorization: "Bearer " + Shared.Security.ClusterSecret.Generate().Value);
                if (wrong != StatusCode.Unauthenticated) failures.Add($"{method.FullName} at {host} with a wrong secret: {wrong}");
                var (bare, _) = await CallAsync(host, method, authorization: TestSecurity.Secret.Value);
                if (bare != StatusCode.Unauthenticated) failures.Add($"{method.FullName} at {host} with the secret but no Bearer scheme: {bare}");
                if (none == StatusCode.Unauthenticated)
                    Assert.Contains("no cluster secret presented", noneDetail, StringComparison.Ordinal);
            }
            // The method really is served somewhere (so the refusals above are not just "no such method").
            var withSecret = new List<StatusCode>();
            foreach (string host in hosts) withSecret.Add((await CallAsync(host, method, TestSecurity.Secret.AuthorizationHeader)).Status);
            if (!withSecret.Any(s => s is not (StatusCode.Unimplemented or StatusCode.Unauthenticated)))
                failures.Add($"{method.FullName} is served by no host of this test ({string.Join(", ", withSecret)}); start the host that serves it here");
        }
        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
        Assert.True(methods.Count >= 12, $"only {methods.Count} methods found in the descriptors");
    }

    [Fact]
    public async Task Every_http_endpoint_refuses_requests_without_the_secret_or_with_a_wrong_one_with_401()
    {
        var routes = HttpRoutes(_coordinator.Endpoints).ToList();
        Assert.Contains(routes, r => r.Method == "POST" && r.Path == "/api/jobs");
        Assert.Contains(routes, r => r.Method == "GET" && r.Path == "/api/cluster");
        var failures = new List<string>();
        using var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false });
        // The health probes are the one exemption (one fixed word each; see the test below).
        var probes = routes.Where(r => r.Method is "GET" or "HEAD" && r.Path is HealthProbes.LivenessPath or HealthProbes.ReadinessPath).ToList();
        Assert.Equal(4, probes.Count);
        foreach (var (method, path) in routes.Except(probes).Append(("GET", "/no/such/page")).Append(("POST", "/logout")))
        {
            foreach (string? authorization in new[] { null, "Bearer wrong-secret-of-enough-length", "Basic " + TestSecurity.Secret.Value })
            {
                using var request = new HttpRequestMessage(new HttpMethod(method), _coordinator.HttpUrl + path) { Content = method == "GET" ? null : new StringContent("{}", MediaTypeHeaderValue.Parse("application/json")) };
                if (authorization is not null) request.Headers.TryAddWithoutValidation("authorization", authorization);
                using var response = await http.SendAsync(request);
                string body = await response.Content.ReadAsStringAsync();
                if (response.StatusCode != HttpStatusCode.Unauthorized || !body.Contains("authorization:", StringComparison.Ordinal))
                    failures.Add($"{method} {path} with {authorization ?? "no authorization"}: {(int)response.StatusCode} {body}");
            }
            using var allowed = new HttpRequestMessage(new HttpMethod(method), _coordinator.HttpUrl + path) { Content = method == "GET" ? null : new StringContent("{}", MediaTypeHeaderValue.Parse("application/json")) };
            allowed.Headers.Authorization = new AuthenticationHeaderValue("Bearer", TestSecurity.Secret.Value);
            // Headers only: the event streams never end.
            using var answer = await http.SendAsync(allowed, HttpCompletionOption.ResponseHeadersRead);
            if (answer.StatusCode == HttpStatusCode.Unauthorized) failures.Add($"{method} {path} with the secret: 401");
        }
        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));

        Assert.Contains(routes, r => r.Method == "GET" && r.Path == "/");
        Assert.Contains(routes, r => r.Method == "GET" && r.Path == "/dashboard/job-1");
    }

    [Fact]
    public async Task A_browser_gets_the_log_in_form_and_a_session_cookie_only_for_the_right_secret()
    {
        using var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false });
        string url = _coordinator.HttpUrl;

        // A page asked for by a browser: 401 with the log-in form (and nothing of the dashboard).
        using var pageRequest = new HttpRequestMessage(HttpMethod.Get, url + "/dashboard/app.js?x=1");
        pageRequest.Headers.Accept.ParseAdd("text/html");
        using var page = await http.SendAsync(pageRequest);
        string form = await page.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.Unauthorized, page.StatusCode);
        Assert.Contains("id=\"login-secret\"", form, StringComparison.Ordinal);
        Assert.Contains("value=\"/dashboard/app.js?x=1\"", form, StringComparison.Ordinal);
        Assert.DoesNotContain("function api(", form, StringComparison.Ordinal);

        // A wrong secret: 401 again, no cookie.
        using var wrong = await http.PostAsync(url + "/login", LoginForm("not-the-cluster-secret", "/"));
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        Assert.False(wrong.Headers.Contains("Set-Cookie"));
        // Not a form: refused with what is expected.
        using var json = await http.PostAsync(url + "/login", new StringContent("{}", MediaTypeHeaderValue.Parse("application/json")));
        Assert.Equal(HttpStatusCode.Unauthorized, json.StatusCode);
        Assert.Contains("application/x-www-form-urlencoded", await json.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // The right secret: a redirect to the page asked for (never to another site) and an HttpOnly, SameSite=Strict cookie.
        using var right = await http.PostAsync(url + "/login", LoginForm(TestSecurity.Secret.Value, "//evil.example/"));
        Assert.Equal(HttpStatusCode.SeeOther, right.StatusCode);
        Assert.Equal("/", right.Headers.Location!.OriginalString);
        string setCookie = Assert.Single(right.Headers.GetValues("Set-Cookie"));
        Assert.Contains("httponly", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", setCookie, StringComparison.OrdinalIgnoreCase);
        string cookie = setCookie.Split(';')[0];
        Assert.DoesNotContain(TestSecurity.Secret.Value, cookie, StringComparison.Ordinal);

        // The cookie opens the pages and the API; a tampered one does not.
        foreach (string path in new[] { "/", "/dashboard/app.js", "/api/cluster" })
        {
            using var withCookie = new HttpRequestMessage(HttpMethod.Get, url + path);
            withCookie.Headers.Add("Cookie", cookie);
            using var answer = await http.SendAsync(withCookie);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        }
        using var tampered = new HttpRequestMessage(HttpMethod.Get, url + "/api/cluster");
        tampered.Headers.Add("Cookie", cookie[..^2] + (cookie[^2] == 'A' ? "B" : "A") + cookie[^1]);
        using var refused = await http.SendAsync(tampered);
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        Assert.Contains("authorization: the cluster secret presented is wrong", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // Log-out clears the cookie.
        using var logout = new HttpRequestMessage(HttpMethod.Post, url + "/logout");
        logout.Headers.Add("Cookie", cookie);
        using var loggedOut = await http.SendAsync(logout);
        Assert.Equal(HttpStatusCode.Redirect, loggedOut.StatusCode);
        Assert.Contains("expires=Thu, 01 Jan 1970", Assert.Single(loggedOut.Headers.GetValues("Set-Cookie")), StringComparison.Ordinal);
    }

    private static FormUrlEncodedContent LoginForm(string secret, string returnPath) =>
        new([new("secret", secret), new("return", returnPath)]);

    [Fact]
    public async Task Every_http_endpoint_of_a_parameter_server_but_its_health_probes_refuses_requests_without_the_secret()
    {
        var routes = HttpRoutes(_server.Endpoints).ToList();
        Assert.Contains(routes, r => r.Method == "GET" && r.Path == "/metrics");
        using var http = new HttpClient();
        var failures = new List<string>();
        foreach (var (method, path) in routes.Where(r => r.Path is not (HealthProbes.LivenessPath or HealthProbes.ReadinessPath)))
        {
            using var request = new HttpRequestMessage(new HttpMethod(method), _server.HttpUrl + path);
            using var response = await http.SendAsync(request);
            if (response.StatusCode != HttpStatusCode.Unauthorized) failures.Add($"{method} {path} without a secret: {(int)response.StatusCode}");
        }
        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
    }

    /// <summary>
    /// The health probes of every role answer without the secret (an orchestrator's probe has
    /// none) but reveal nothing beyond up or down: one fixed word. Any other method on their
    /// paths, or any path below them, still needs the secret.
    /// </summary>
    [Fact]
    public async Task Health_probes_of_every_role_answer_without_the_secret_and_reveal_nothing_else()
    {
        var readiness = new Readiness();
        await using var worker = await Worker.Telemetry.WorkerHttpListener.StartAsync(
            "127.0.0.1", 0, TestSecurity.Loopback, new Worker.Telemetry.WorkerTelemetry(), readiness, CancellationToken.None);
        using var http = new HttpClient();
        async Task<(HttpStatusCode Status, string Body)> Get(string url, HttpMethod? method = null)
        {
            using var response = await http.SendAsync(new HttpRequestMessage(method ?? HttpMethod.Get, url));
            return (response.StatusCode, await response.Content.ReadAsStringAsync());
        }

        Assert.Equal((HttpStatusCode.OK, "ok\n"), await Get(worker.Url + HealthProbes.LivenessPath));
        Assert.Equal((HttpStatusCode.ServiceUnavailable, "not ready\n"), await Get(worker.Url + HealthProbes.ReadinessPath));
        readiness.MarkReady();
        foreach (string baseUrl in new[] { _coordinator.HttpUrl, _server.HttpUrl, worker.Url })
        {
            Assert.Equal((HttpStatusCode.OK, "ok\n"), await Get(baseUrl + HealthProbes.LivenessPath));
            Assert.Equal((HttpStatusCode.OK, "ready\n"), await Get(baseUrl + HealthProbes.ReadinessPath));
            Assert.Equal(HttpStatusCode.OK, (await Get(baseUrl + HealthProbes.ReadinessPath, HttpMethod.Head)).Status);
            Assert.Equal(HttpStatusCode.Unauthorized, (await Get(baseUrl + HealthProbes.ReadinessPath, HttpMethod.Post)).Status);
            Assert.Equal(HttpStatusCode.Unauthorized, (await Get(baseUrl + HealthProbes.LivenessPath + "/metrics")).Status);
            Assert.Equal(HttpStatusCode.Unauthorized, (await Get(baseUrl + "/metrics")).Status);
        }
    }

    [Fact]
    public async Task A_worker_or_client_with_a_wrong_secret_is_refused_with_a_message_that_says_so()
    {
        var wrong = new Dictionary<string, string?> { ["CLUSTER_SECRET"] = Shared.Security.ClusterSecret.Generate().Value };
        using var worker = ClusterCommand.StartWith(wrong, "worker", "--coordinator", _coordinator.GrpcUrl, "--once");
        Assert.Equal(1, await worker.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains($"coordinator at {_coordinator.GrpcUrl} refused this member: the cluster secret presented is wrong", worker.Stderr, StringComparison.Ordinal);

        using var status = ClusterCommand.StartWith(wrong, "status", "--api", _coordinator.HttpUrl);
        Assert.Equal(2, await status.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("authorization: the cluster secret presented is wrong", status.Stderr, StringComparison.Ordinal);
        Assert.Empty(_coordinator.Board.Read((_, members) => members.Workers.ToList()));
    }

    /// <summary>The coordinator's HTTP routes (not its gRPC methods), with route parameters filled in.</summary>
    private static IEnumerable<(string Method, string Path)> HttpRoutes(IEnumerable<Endpoint> endpoints)
    {
        foreach (var endpoint in endpoints.OfType<RouteEndpoint>())
        {
            if (endpoint.Metadata.Any(m => m.GetType().Namespace?.StartsWith("Grpc.", StringComparison.Ordinal) == true)) continue;
            if (endpoint.DisplayName?.StartsWith("gRPC", StringComparison.Ordinal) == true) continue;
            string path = "/" + string.Join("/", endpoint.RoutePattern.PathSegments.Select(segment =>
                string.Concat(segment.Parts.Select(part => part is Microsoft.AspNetCore.Routing.Patterns.RoutePatternLiteralPart literal ? literal.Content : "job-1"))));
            var methods = endpoint.Metadata.GetMetadata<IHttpMethodMetadata>()?.HttpMethods ?? ["GET"];
            foreach (string method in methods) yield return (method, path);
        }
    }

    /// <summary>Calls a method with an empty request through a raw byte marshaller; returns the status it ended with.</summary>
    private static async Task<(StatusCode Status, string Detail)> CallAsync(string url, MethodDescriptor descriptor, string? authorization)
    {
        using var channel = GrpcChannel.ForAddress(url);
        var invoker = channel.CreateCallInvoker();
        var marshaller = Marshallers.Create<byte[]>(bytes => bytes, bytes => bytes);
        var type = (descriptor.IsClientStreaming, descriptor.IsServerStreaming) switch
        {
            (false, false) => MethodType.Unary,
            (true, false) => MethodType.ClientStreaming,
            (false, true) => MethodType.ServerStreaming,
            _ => MethodType.DuplexStreaming,
        };
        var method = new Method<byte[], byte[]>(type, descriptor.Service.FullName, descriptor.Name, marshaller, marshaller);
        var headers = new Metadata();
        if (authorization is not null) headers.Add("authorization", authorization);
        var options = new CallOptions(headers, DateTime.UtcNow + CallDeadline);
        try
        {
            switch (type)
            {
                case MethodType.Unary:
                    await invoker.AsyncUnaryCall(method, null, options, []);
                    break;
                case MethodType.ClientStreaming:
                    using (var call = invoker.AsyncClientStreamingCall(method, null, options))
                    {
                        try { await call.RequestStream.CompleteAsync(); } catch (RpcException) { } catch (InvalidOperationException) { }
                        await call.ResponseAsync;
                    }
                    break;
                case MethodType.ServerStreaming:
                    using (var call = invoker.AsyncServerStreamingCall(method, null, options, []))
                        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
                    break;
                default:
                    using (var call = invoker.AsyncDuplexStreamingCall(method, null, options))
                    {
                        try { await call.RequestStream.CompleteAsync(); } catch (RpcException) { } catch (InvalidOperationException) { }
                        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
                    }
                    break;
            }
            return (StatusCode.OK, "");
        }
        catch (RpcException e)
        {
            return (e.StatusCode, e.Status.Detail);
        }
    }
}
