namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// The one place where the coordinator makes HTTP clients for its members' HTTP sides
/// (/stats, /timeline): where members require the cluster secret or TLS, this is where the
/// authorization header and the trust settings belong.
/// </summary>
public static class MemberHttp
{
    public static HttpClient Create(TimeSpan timeout) => new() { Timeout = timeout };
}
