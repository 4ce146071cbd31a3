namespace Cluster.Worker.Training;

/// <summary>How a worker's pushes and pulls travel to the parameter servers (worker --ps-transport).</summary>
public enum ParameterServerTransport
{
    /// <summary>The servers' data ports: frames over one TCP (or TLS) connection per exchange in flight; the fast path.</summary>
    Tcp,
    /// <summary>The PushGradients and PullParameters gRPC streams (HTTP/2).</summary>
    Grpc,
    /// <summary>
    /// The data ports, and for a server on this host the chunks' data through shared memory
    /// (Shared/Wire/SharedRegion), only the frames going through the socket; tcp for a server elsewhere.
    /// </summary>
    Shm,
}
