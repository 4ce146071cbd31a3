using Cluster.Shared.Security;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// The one place where the coordinator makes HTTP clients for its members' HTTP sides
/// (/stats, /timeline): every request carries the cluster secret, and TLS members are checked
/// against the cluster CA.
/// </summary>
public static class MemberHttp
{
    public static HttpClient Create(ClusterSecurity security, TimeSpan timeout) =>
        new(ClusterTransport.Handler(security)) { Timeout = timeout };
}
