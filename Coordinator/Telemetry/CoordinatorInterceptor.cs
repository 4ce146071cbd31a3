using Cluster.Protos;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Cluster.Coordinator.Telemetry;

/// <summary>
/// Watches the coordinator's gRPC calls for observability, so that the service and the job
/// board stay free of it: counts calls and heartbeats, keeps each member's HTTP address and
/// device from its registration, and feeds the workers' step phases and loss to
/// <see cref="JobTelemetryStore"/>. It only reads calls that the service accepted.
/// </summary>
public sealed class CoordinatorInterceptor(CoordinatorMetrics metrics, MemberDirectory members, JobTelemetryStore jobs, TimeProvider time) : Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        string method = context.Method[(context.Method.LastIndexOf('/') + 1)..];
        TResponse response;
        try
        {
            response = await continuation(request, context);
        }
        catch (RpcException e)
        {
            metrics.Rpc(method, e.StatusCode.ToString());
            throw;
        }
        metrics.Rpc(method, nameof(StatusCode.OK));
        Observe(request, response);
        return response;
    }

    private void Observe(object request, object? response)
    {
        switch (request)
        {
            case HeartbeatRequest:
                metrics.Heartbeats.Increment();
                break;
            case RegisterWorkerRequest worker when response is RegisterWorkerReply reply:
                members.AddWorker(reply.WorkerId, worker.HttpUrl, worker.DeviceDetail);
                break;
            case RegisterParameterServerRequest server:
                members.AddServer(server.Address, server.HttpUrl);
                break;
            case ReportProgressRequest progress:
                metrics.ProgressReports.Increment();
                metrics.ReportedSteps.Increment(progress.TimedSteps);
                metrics.ReportedSamples.Increment(progress.SampleCount);
                jobs.For(progress.JobId).Record(progress, time.GetUtcNow());
                break;
        }
    }
}
