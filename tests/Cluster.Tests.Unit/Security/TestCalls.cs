using Grpc.Core;

namespace Cluster.Tests.Unit.Security;

/// <summary>What a gRPC service method sees of a call, without a network: a request stream and a context.</summary>
public sealed class ListStream<T>(IEnumerable<T> messages) : IAsyncStreamReader<T>
{
    private readonly IEnumerator<T> _messages = messages.GetEnumerator();
    public T Current => _messages.Current;
    public Task<bool> MoveNext(CancellationToken cancellationToken) => Task.FromResult(_messages.MoveNext());
}

/// <summary>A server stream that keeps what the method wrote.</summary>
public sealed class ListWriter<T> : IServerStreamWriter<T>
{
    public List<T> Written { get; } = [];
    public WriteOptions? WriteOptions { get; set; }
    public Task WriteAsync(T message) { Written.Add(message); return Task.CompletedTask; }
}

public sealed class TestCallContext(CancellationToken cancellationToken) : ServerCallContext
{
    protected override string MethodCore => "test";
    protected override string HostCore => "localhost";
    protected override string PeerCore => "ipv4:127.0.0.1:1";
    protected override DateTime DeadlineCore => DateTime.MaxValue;
    protected override Metadata RequestHeadersCore { get; } = [];
    protected override CancellationToken CancellationTokenCore => cancellationToken;
    protected override Metadata ResponseTrailersCore { get; } = [];
    protected override Status StatusCore { get; set; }
    protected override WriteOptions? WriteOptionsCore { get; set; }
    protected override AuthContext AuthContextCore => new(null, []);
    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
}
