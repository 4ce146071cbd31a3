using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Cluster.Protos;
using Cluster.Shared.Rpc;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.Worker.Training;

/// <summary>
/// A worker's connection to the coordinator's lease port (coordinator.proto, LeasePortFrame),
/// opened on the first lease and kept: a request frame, then the reply or LeaseShard's refusal
/// (an RpcException with its status; the connection stays open). A connection that breaks is
/// closed and the next lease opens a new one. Its calls block the caller
/// (<see cref="BlockingSocketStream"/>), so the reply wakes the thread that asked directly; a
/// cancelled token closes the connection, which ends a call in progress.
/// </summary>
public sealed class LeasePortClient(string host, int port, bool tls, ClusterSecurity security) : IDisposable
{
    /// <summary>Longest wait for the port to accept and authenticate a connection.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);

    private BlockingSocketStream? _socket;
    private Stream? _stream;
    private LeasePortProtocol.Reader? _reader;

    public string Address { get; } = $"{(tls ? "https" : "http")}://{host}:{port}";

    /// <summary>The port on the host of <paramref name="coordinatorUrl"/>, TLS when that address is https.</summary>
    public static LeasePortClient For(string coordinatorUrl, int port, ClusterSecurity security)
    {
        var uri = new Uri(coordinatorUrl);
        return new LeasePortClient(uri.Host, port, uri.Scheme == Uri.UriSchemeHttps, security);
    }

    /// <exception cref="PeerUnreachableException">No connection could be made and authenticated (the port is closed, filtered, or not a lease port).</exception>
    /// <exception cref="RpcException">The coordinator refused the request, with LeaseShard's status.</exception>
    /// <exception cref="IOException">The connection broke, or a frame against the rules came back; the connection is closed.</exception>
    public async Task<LeaseShardReply> LeaseAsync(LeaseShardRequest request, CancellationToken cancellationToken)
    {
        var (socket, stream, reader) = _stream is { } open ? (_socket!, open, _reader!) : await ConnectAsync(cancellationToken);
        try
        {
            using var abort = socket.AbortOn(cancellationToken);
            await LeasePortProtocol.WriteAsync(stream, new LeasePortFrame { Request = request }, cancellationToken);
            await stream.FlushAsync(cancellationToken);
            var frame = await reader.ReadAsync(cancellationToken) ?? throw new EndOfStreamException("the coordinator closed the lease connection");
            return frame.BodyCase switch
            {
                LeasePortFrame.BodyOneofCase.Reply => frame.Reply,
                LeasePortFrame.BodyOneofCase.Refusal => throw new RpcException(new Status((StatusCode)frame.Refusal.StatusCode, frame.Refusal.Detail)),
                _ => throw new InvalidDataException($"lease frame: {frame.BodyCase}; expected a reply or a refusal"),
            };
        }
        catch (Exception e) when (e is not RpcException)
        {
            Close();
            cancellationToken.ThrowIfCancellationRequested();
            throw e is InvalidDataException ? new IOException($"lease port at {Address}: {e.Message}", e) : e;
        }
    }

    private async Task<(BlockingSocketStream, Stream, LeasePortProtocol.Reader)> ConnectAsync(CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(ConnectTimeout);
        BlockingSocketStream? socket = null;
        Stream? stream = null;
        try
        {
            socket = await BlockingSocketStream.ConnectAsync(host, port, timeout.Token);
            stream = socket;
            // TLS and the handshake are blocking calls: the timeout closes the socket under them.
            using var abort = socket.AbortOn(timeout.Token);
            if (tls)
            {
                var secured = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = secured;
                await secured.AuthenticateAsClientAsync(DataPortTls.ClientOptions(security, host), timeout.Token);
            }
            await LeasePortProtocol.Handshake.ConnectAsync(stream, security.Secret, ReadOnlyMemory<byte>.Empty, timeout.Token);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested && (e is SocketException or IOException or AuthenticationException
            or OperationCanceledException or ObjectDisposedException))
        {
            if (stream is not null) await stream.DisposeAsync();
            string why = timeout.IsCancellationRequested ? $"no connection within {ConnectTimeout.TotalSeconds:0} s" : e.Message;
            throw new PeerUnreachableException($"lease port at {Address}: {why}", e);
        }
        catch
        {
            if (stream is not null) await stream.DisposeAsync();
            cancellationToken.ThrowIfCancellationRequested();
            throw;
        }
        (_socket, _stream, _reader) = (socket, stream, new LeasePortProtocol.Reader(stream));
        return (socket, stream, _reader);
    }

    private void Close()
    {
        _stream?.Dispose();
        (_socket, _stream, _reader) = (null, null, null);
    }

    public void Dispose() => Close();
}
