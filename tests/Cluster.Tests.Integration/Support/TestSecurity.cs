using System.Net.Http.Headers;
using Cluster.Shared.Security;

namespace Cluster.Tests.Integration.Support;

/// <summary>The cluster secret the tests' clusters share: in-process hosts get it in their options, `cluster` processes in CLUSTER_SECRET.</summary>
public static class TestSecurity
{
    public static readonly ClusterSecret Secret = ClusterSecret.Generate();

    /// <summary>Loopback, plain HTTP, the test secret.</summary>
    public static ClusterSecurity Loopback { get; } = new() { Secret = Secret };

    /// <summary>A plain HTTP client that sends the test secret.</summary>
    public static HttpClient HttpClient()
    {
        var http = new HttpClient();
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Secret.Value);
        return http;
    }
}
