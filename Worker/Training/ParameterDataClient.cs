using System.Collections.Concurrent;
using System.Diagnostics;
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
/// Pushes and pulls over one parameter server's data port (parameter_server.proto, "The data
/// port"): each exchange takes an idle authenticated connection (or opens one), and gives it
/// back once the exchange completed; a connection that failed or was cancelled mid-exchange is
/// closed. The connections make blocking socket calls (<see cref="BlockingSocketStream"/>): an
/// exchange runs on the caller's thread from its first frame to its last and returns a task that
/// has already ended, so the frame that answers it wakes that thread directly, not the socket
/// engine's thread and then a thread-pool thread. The exchange's timeout and the caller's token
/// close the connection, which ends a call in progress. Errors the server answers become the
/// <see cref="RpcException"/> the gRPC call would have thrown, so callers handle both transports
/// alike; a server that cannot be reached is a
/// <see cref="PeerUnreachableException"/>, a broken connection an <see cref="IOException"/>.
/// With <paramref name="regionBytes"/> above 0 and a server on this host, each connection asks
/// for a shared region of that size (the largest exchange) and chunk data goes through it
/// (<see cref="SharedRegion"/>); a server that offers none, or that cannot be mapped, is served
/// through the socket as before.
/// </summary>
public sealed class ParameterDataClient(string address, ClusterSecurity security, TimeSpan connectTimeout, int regionBytes = 0,
    string? regionDirectory = null) : IDisposable
{
    private readonly ConcurrentBag<Connection> _idle = [];
    private bool _disposed;

    public string Address { get; } = address;

    /// <summary>Whether the last connection opened maps a shared region with the server.</summary>
    public bool LastConnectionShared { get; private set; }

    /// <summary>Why the last connection opened has no shared region although one was asked for; null when it has one or none was asked for.</summary>
    public string? LastRegionRefusal { get; private set; }

    /// <summary>Sends a push: the header, the chunks (their data straight from the caller's buffers), the end; returns the server's reply.</summary>
    public Task<PushReply> PushAsync(PushHeader header, IEnumerable<TensorChunk> chunks, TimeSpan timeout, CancellationToken cancellationToken) =>
        ExchangeAsync(timeout, async (connection, token) =>
        {
            var writer = connection.Writer;
            var region = connection.Buffers.Region?.StartExchange();
            await ParameterDataProtocol.WriteAsync(writer, new DataFrame { PushHeader = header }, token);
            // Through a region, the header goes at once: the server wakes while the first chunk is copied.
            if (region is not null) await writer.FlushAsync(token);
            // One chunk's write stays in flight while the next is taken (bf16/fp16 chunks are encoded as they are taken).
            var writing = Task.CompletedTask;
            try
            {
                foreach (var chunk in chunks)
                {
                    var frameChunk = new TensorChunk { OffsetElements = chunk.OffsetElements, LengthElements = chunk.LengthElements, Indices = chunk.Indices };
                    await writing;
                    writing = ParameterDataProtocol.WriteChunkAsync(writer, frameChunk, chunk.Data.Memory, token, region).AsTask();
                }
            }
            catch
            {
                // A failed chunk leaves a write in flight: the connection is dropped after it, never mid-frame, and the first failure is what counts.
                try { await writing; }
                catch (Exception) { }
                throw;
            }
            await writing;
            await ParameterDataProtocol.WriteAsync(writer, new DataFrame { End = new DataEnd() }, token);
            await writer.FlushAsync(token);
            var answer = await ParameterDataProtocol.ReadExpectedAsync(connection.Reader, connection.Buffers, "a push's answer", token,
                DataFrame.BodyOneofCase.PushReply, DataFrame.BodyOneofCase.Error);
            ThrowIfError(answer);
            return answer.PushReply;
        }, cancellationToken);

    /// <summary>
    /// Pulls into <paramref name="destination"/>; returns the pull's AppliedSteps (null when it
    /// had none) and when the first chunk arrived (Stopwatch timestamp). <paramref name="onApplied"/>
    /// is called with the AppliedSteps as soon as it arrives, on the pull's thread, whether
    /// before the chunks (BSP) or after them.
    /// </summary>
    public Task<(AppliedSteps? Applied, long FirstChunkTimestamp)> PullAsync(PullRequest request, Memory<float> destination, TimeSpan timeout,
        CancellationToken cancellationToken, Action<AppliedSteps>? onApplied = null) =>
        ExchangeAsync(timeout, async (connection, token) =>
        {
            await ParameterDataProtocol.WriteAsync(connection.Writer, new DataFrame { PullRequest = request }, token);
            await connection.Writer.FlushAsync(token);
            var first = await ParameterDataProtocol.ReadExpectedAsync(connection.Reader, connection.Buffers, "a pull", token,
                DataFrame.BodyOneofCase.PullHeader, DataFrame.BodyOneofCase.Error);
            ThrowIfError(first);
            var header = first.PullHeader;
            if (header.ElementCount != destination.Length)
                throw new InvalidDataException(
                    $"parameter server {Address}: holds {header.ElementCount} elements for job {request.JobId}; this worker expects {destination.Length}");
            long received = 0, firstChunk = 0;
            AppliedSteps? applied = null;
            while (true)
            {
                var (frame, dataBytes) = await ParameterDataProtocol.ReadExpectedHeaderAsync(connection.Reader, connection.Buffers, "a pull", token,
                    DataFrame.BodyOneofCase.Chunk, DataFrame.BodyOneofCase.Applied, DataFrame.BodyOneofCase.End, DataFrame.BodyOneofCase.Error);
                ThrowIfError(frame);
                if (frame.BodyCase == DataFrame.BodyOneofCase.End) break;
                if (frame.BodyCase == DataFrame.BodyOneofCase.Applied)
                {
                    applied = frame.Applied;
                    onApplied?.Invoke(applied);
                    continue;
                }
                if (received == 0) firstChunk = Stopwatch.GetTimestamp();
                received = await ParameterDataProtocol.ReadDenseDataAsync(connection.Reader, connection.Buffers, frame.Chunk, dataBytes, header.Dtype,
                    destination, received, token) ?? ChunkReader.ReadDense(frame.Chunk, header.Dtype, destination.Span, received);
            }
            if (received != header.ElementCount)
                throw new InvalidDataException($"parameter server {Address}: sent {received} of {header.ElementCount} elements");
            return (applied, firstChunk);
        }, cancellationToken);

    private async Task<T> ExchangeAsync<T>(TimeSpan timeout, Func<Connection, CancellationToken, Task<T>> exchange, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        Connection? connection = null;
        try
        {
            connection = _idle.TryTake(out var idle) ? idle : await ConnectAsync(deadline.Token);
            T result;
            using (connection.Socket.AbortOn(deadline.Token))
                result = await exchange(connection, deadline.Token);
            // Closed by the deadline just as the exchange ended: not kept.
            if (_disposed || deadline.IsCancellationRequested) connection.Dispose();
            else _idle.Add(connection);
            return result;
        }
        catch (Exception e)
        {
            connection?.Dispose();
            // The idle connections share this one's fate when the server went away (a server restarted on the same port).
            DropIdle();
            cancellationToken.ThrowIfCancellationRequested();
            if (deadline.IsCancellationRequested)
                throw new PeerUnreachableException($"parameter server data port at {Address} did not answer within {timeout.TotalSeconds:0.#} s", e);
            throw;
        }
    }

    private static void ThrowIfError(DataFrame frame)
    {
        if (frame.BodyCase == DataFrame.BodyOneofCase.Error)
            throw new RpcException(new Status((StatusCode)frame.Error.StatusCode, frame.Error.Detail));
    }

    private async Task<Connection> ConnectAsync(CancellationToken cancellationToken)
    {
        var uri = new Uri(Address);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(connectTimeout);
        BlockingSocketStream socket;
        try
        {
            socket = await BlockingSocketStream.ConnectAsync(uri.Host, uri.Port, timeout.Token);
        }
        catch (Exception e) when (e is SocketException || e is OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            throw new PeerUnreachableException($"parameter server data port at {Address} did not accept a connection ({e.Message})", e);
        }
        Stream stream = socket;
        // TLS, the handshake and the region's exchange are blocking calls too: the connect timeout closes the socket under them.
        using var abort = socket.AbortOn(timeout.Token);
        try
        {
            if (uri.Scheme == Uri.UriSchemeHttps)
            {
                var tls = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = tls;
                await tls.AuthenticateAsClientAsync(DataPortTls.ClientOptions(security, uri.Host), timeout.Token);
            }
            await ParameterDataProtocol.Handshake.ConnectAsync(stream, security.Secret, ReadOnlyMemory<byte>.Empty, timeout.Token);
            var connection = new Connection(socket, stream);
            (LastConnectionShared, LastRegionRefusal) = (false, null);
            if (regionBytes > 0 && regionDirectory is not null && await SharedRegion.IsThisHostAsync(uri.Host, timeout.Token))
            {
                var (region, detail) = await ParameterDataProtocol.RequestRegionAsync(connection.Reader, connection.Writer, connection.Buffers,
                    regionBytes, regionDirectory, timeout.Token);
                (connection.Buffers.Region, LastConnectionShared, LastRegionRefusal) = (region, region is not null, region is null ? detail : null);
            }
            return connection;
        }
        catch (AuthenticationException e)
        {
            await stream.DisposeAsync();
            throw new IOException($"parameter server data port at {Address}: TLS failed ({e.Message})", e);
        }
        catch (Exception e) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            await stream.DisposeAsync();
            throw new PeerUnreachableException(
                $"parameter server data port at {Address} did not complete its handshake within {connectTimeout.TotalSeconds:0.#} s ({e.Message})", e);
        }
        catch
        {
            await stream.DisposeAsync();
            throw;
        }
    }

    /// <summary>Closes the idle connections: the next exchange connects afresh.</summary>
    public void DropIdle()
    {
        while (_idle.TryTake(out var connection)) connection.Dispose();
    }

    public void Dispose()
    {
        _disposed = true;
        DropIdle();
    }

    /// <summary>
    /// An authenticated connection (<paramref name="stream"/>: the socket, or TLS over it) with its
    /// buffered views (one per direction) and receive buffers.
    /// </summary>
    private sealed class Connection(BlockingSocketStream socket, Stream stream) : IDisposable
    {
        /// <summary>The socket under the stream: closing it ends a blocking call in progress.</summary>
        public BlockingSocketStream Socket => socket;

        public BufferedStream Reader { get; } = new(stream, ParameterDataProtocol.StreamBufferBytes);
        public BufferedStream Writer { get; } = new(stream, ParameterDataProtocol.StreamBufferBytes);
        public FrameBuffers Buffers { get; } = new();

        public void Dispose()
        {
            stream.Dispose();
            // The connection is disposed only once its exchange has ended (or it was idle): nothing uses the region.
            Buffers.Region?.Release();
        }
    }
}
