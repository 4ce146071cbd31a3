using Cluster.Protos;
using Cluster.Shared.Rpc;
using Cluster.Shared.Security;
using Cluster.Shared.Wire;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cluster.Worker.Training;

/// <summary>
/// The worker's side of parameter_server.proto: Initialize, PushGradients and
/// PullParameters over one gRPC channel, streaming flat buffers in chunks.
/// </summary>
public sealed class ParameterServerClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly ParameterServer.ParameterServerClient _client;
    private readonly TimeSpan _callTimeout;
    private readonly TimeSpan _barrierTimeout;
    private readonly TimeSpan _connectTimeout;

    public ParameterServerClient(string address, ClusterSecurity security, TimeSpan connectTimeout, TimeSpan callTimeout, TimeSpan barrierTimeout)
    {
        _connectTimeout = connectTimeout;
        Address = address;
        _channel = ClusterTransport.Channel(address, security, "parameter server");
        _client = new ParameterServer.ParameterServerClient(_channel);
        (_callTimeout, _barrierTimeout) = (callTimeout, barrierTimeout);
    }

    public string Address { get; }

    /// <summary>The first call to the server: retried until <c>connectTimeout</c> while the server is not up yet.</summary>
    public Task<InitializeReply> InitializeAsync(InitializeHeader header, ReadOnlyMemory<byte> parameters, CancellationToken cancellationToken) =>
        Reconnect.UntilAsync("parameter server", Address, _connectTimeout, async deadline =>
        {
            using var call = _client.Initialize(deadline: Min(deadline, Deadline(_callTimeout)), cancellationToken: cancellationToken);
            await SendAsync(call.RequestStream, new InitializeMessage { Header = header }, chunk => new InitializeMessage { Chunk = chunk }, parameters, cancellationToken);
            return await call.ResponseAsync;
        }, cancellationToken);

    public async Task<long> PushAsync(PushHeader header, ReadOnlyMemory<byte> gradient, CancellationToken cancellationToken)
    {
        using var call = _client.PushGradients(deadline: Deadline(_barrierTimeout), cancellationToken: cancellationToken);
        await Guard(() => SendAsync(call.RequestStream, new PushMessage { Header = header }, chunk => new PushMessage { Chunk = chunk }, gradient, cancellationToken));
        return (await Guard(() => call.ResponseAsync)).Version;
    }

    /// <summary>A client stream of one header message, then the buffer as chunks (wrapped, not copied).</summary>
    private static async Task SendAsync<TMessage>(
        IClientStreamWriter<TMessage> stream, TMessage header, Func<TensorChunk, TMessage> wrap, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        await stream.WriteAsync(header, cancellationToken);
        foreach (var chunk in TensorWire.Chunks(buffer))
            await stream.WriteAsync(wrap(chunk), cancellationToken);
        await stream.CompleteAsync();
    }

    private static DateTime Min(DateTime a, DateTime b) => a < b ? a : b;

    /// <summary>Waits for version >= <paramref name="minVersion"/> and copies it into <paramref name="destination"/>; returns its version.</summary>
    public async Task<long> PullAsync(string jobId, long minVersion, Memory<byte> destination, CancellationToken cancellationToken)
    {
        using var call = _client.PullParameters(
            new PullRequest { JobId = jobId, MinVersion = minVersion },
            deadline: Deadline(_barrierTimeout), cancellationToken: cancellationToken);
        return await Guard(async () =>
        {
            var stream = call.ResponseStream;
            if (!await stream.MoveNext(cancellationToken) || stream.Current.BodyCase != PullMessage.BodyOneofCase.Header)
                throw new InvalidDataException($"parameter server {Address}: pull stream did not start with a header");
            var header = stream.Current.Header;
            if (header.ElementCount * sizeof(float) != destination.Length)
                throw new InvalidDataException(
                    $"parameter server {Address}: holds {header.ElementCount} elements for job {jobId}; this model has {destination.Length / sizeof(float)}");
            long received = 0;
            while (await stream.MoveNext(cancellationToken))
                received = TensorWire.CopyNextChunk(stream.Current.Chunk, destination.Span, received);
            if (received != header.ElementCount)
                throw new InvalidDataException($"parameter server {Address}: sent {received} of {header.ElementCount} elements");
            return header.Version;
        });
    }

    public async Task FinishAsync(string jobId, CancellationToken cancellationToken) =>
        await Guard(async () => await _client.FinishAsync(new FinishRequest { JobId = jobId }, deadline: Deadline(_callTimeout), cancellationToken: cancellationToken));

    private static DateTime Deadline(TimeSpan timeout) => DateTime.UtcNow + timeout;

    /// <summary>Turns transport failures into errors that name the server's address.</summary>
    private async Task<T> Guard<T>(Func<Task<T>> call)
    {
        try
        {
            return await call();
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
        {
            throw new PeerUnreachableException($"parameter server at {Address} did not answer ({e.StatusCode}: {e.Status.Detail})", e);
        }
    }

    private Task Guard(Func<Task> call) => Guard(async () => { await call(); return true; });

    public void Dispose() => _channel.Dispose();
}

