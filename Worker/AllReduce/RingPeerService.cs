using Cluster.Protos;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.Worker.AllReduce;

/// <summary>gRPC adapter of ring.proto's RingPeer over <see cref="PeerInbox"/>.</summary>
public sealed class RingPeerService(PeerInbox inbox) : RingPeer.RingPeerBase
{
    public override async Task Stream(RingHello request, IServerStreamWriter<RingSegment> responseStream, ServerCallContext context)
    {
        try
        {
            await inbox.OfferAsync(request, responseStream, context.CancellationToken);
        }
        catch (OperationCanceledException)
        {
            throw new RpcException(new Status(StatusCode.Cancelled, "ring stream: cancelled"));
        }
    }

    public override async Task Fetch(FetchRequest request, IServerStreamWriter<FetchMessage> responseStream, ServerCallContext context)
    {
        var vector = inbox.Find(request) ?? throw new RpcException(new Status(StatusCode.NotFound,
            $"fetch: job {request.JobId} has no {request.Kind} for step {request.Step} on this worker"));
        await responseStream.WriteAsync(new FetchMessage { ElementCount = vector.Length / sizeof(float) }, context.CancellationToken);
        foreach (var chunk in TensorWire.Chunks(vector))
            await responseStream.WriteAsync(new FetchMessage { Chunk = chunk }, context.CancellationToken);
    }
}
