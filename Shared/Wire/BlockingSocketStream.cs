using System.Net.Sockets;

namespace Cluster.Shared.Wire;

/// <summary>
/// A connected socket as a stream whose every call, the async ones included, is a blocking call
/// on the caller's thread. For a connection served by a thread of its own: .NET puts a socket in
/// non-blocking mode for good at its first async operation, after which even its blocking calls
/// wait through the socket engine's thread and the thread pool; this stream never does, so a
/// frame that arrives wakes the serving thread directly. Deadlines are the socket's
/// ReceiveTimeout and SendTimeout, since a token cannot interrupt a blocking call by itself;
/// disposing the stream from another thread ends a call in progress, and <see cref="AbortOn"/>
/// does so when a token is cancelled.
/// </summary>
public sealed class BlockingSocketStream(Socket socket) : Stream
{
    private readonly NetworkStream _inner = new(socket, ownsSocket: true);

    /// <summary>
    /// Connects to <paramref name="host"/>:<paramref name="port"/> with the socket left in blocking
    /// mode: the blocking connect runs on the thread pool, and a cancelled token closes the socket,
    /// which ends it (OperationCanceledException; a refused or failed connect is a SocketException).
    /// </summary>
    public static async Task<BlockingSocketStream> ConnectAsync(string host, int port, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var connecting = Task.Run(() => socket.Connect(host, port), CancellationToken.None);
        try
        {
            await connecting.WaitAsync(cancellationToken);
        }
        catch
        {
            socket.Dispose();
            // The connect ends with the socket; its failure is not the one that counts.
            _ = connecting.ContinueWith(static ended => ended.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            throw;
        }
        return new BlockingSocketStream(socket);
    }

    /// <summary>
    /// Closes the socket when <paramref name="cancellationToken"/> is cancelled, which ends a call in
    /// progress on another thread (and a TLS stream's above it: the socket is what it reads).
    /// </summary>
    public CancellationTokenRegistration AbortOn(CancellationToken cancellationToken) =>
        cancellationToken.Register(static stream => ((Stream)stream!).Dispose(), this);

    public Socket Socket => socket;

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, count);
    public override int Read(Span<byte> buffer) => _inner.Read(buffer);
    public override void Write(byte[] buffer, int offset, int count) => _inner.Write(buffer, offset, count);
    public override void Write(ReadOnlySpan<byte> buffer) => _inner.Write(buffer);
    public override void Flush() { }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(_inner.Read(buffer.Span));
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        _inner.Write(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing) _inner.Dispose();
        base.Dispose(disposing);
    }
}
