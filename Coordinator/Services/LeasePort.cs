using Cluster.Coordinator.Jobs;
using Cluster.Protos;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.Coordinator.Services;

/// <summary>
/// The coordinator's lease port (coordinator.proto, LeasePortFrame): LeaseShards' exchange on a
/// raw TCP connection. Each request is answered where it is read, with the answer LeaseShard
/// gives (<see cref="CoordinatorService.Lease"/>): the reply, or its refusal's status and detail.
/// Every connection is served by blocking calls on a thread of its own: a request wakes that
/// thread directly, and no thread-pool worker spins after each of a step's leases.
/// </summary>
public sealed class LeasePort : IAsyncDisposable
{
    /// <summary>
    /// Connections served at once: one per worker of the cluster, each a thread of its own blocked
    /// in a read. A worker refused beyond that leases on its gRPC stream.
    /// </summary>
    public const int ConnectionsMax = 2048;
    private readonly AuthenticatedListener _listener;

    private LeasePort(AuthenticatedListener listener) => _listener = listener;

    /// <summary>The bound port, which workers are told with their assignment.</summary>
    public int Port => _listener.Port;

    /// <summary>Connections that proved the secret; for tests.</summary>
    public int Authenticated => _listener.Authenticated;

    public static LeasePort Start(string bindAddress, int port, ClusterSecurity security, JobBoard board) =>
        new(new AuthenticatedListener(bindAddress, port, security, LeasePortProtocol.Handshake, ConnectionsMax,
            (stream, stopping) => ServeAsync(stream, board, stopping), threadPerConnection: true));

    private static async Task ServeAsync(Stream stream, JobBoard board, CancellationToken stopping)
    {
        var reader = new LeasePortProtocol.Reader(stream);
        while (await reader.ReadAsync(stopping) is { } frame)
        {
            if (frame.BodyCase != LeasePortFrame.BodyOneofCase.Request)
                throw new InvalidDataException($"lease frame: {frame.BodyCase}; expected a request");
            LeasePortFrame answer;
            try
            {
                answer = new LeasePortFrame { Reply = CoordinatorService.Lease(board, frame.Request) };
            }
            catch (RpcException e)
            {
                answer = new LeasePortFrame { Refusal = new LeaseRefusal { StatusCode = (int)e.StatusCode, Detail = e.Status.Detail } };
            }
            await LeasePortProtocol.WriteAsync(stream, answer, stopping);
            await stream.FlushAsync(stopping);
        }
    }

    public ValueTask DisposeAsync() => _listener.DisposeAsync();
}
