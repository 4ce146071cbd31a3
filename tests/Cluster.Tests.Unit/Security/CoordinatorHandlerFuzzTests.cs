using Cluster.Coordinator;
using Cluster.Coordinator.Jobs;
using Cluster.Coordinator.Services;
using Cluster.Protos;
using Cluster.Shared.Jobs;
using Google.Protobuf;
using Grpc.Core;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// The coordinator's gRPC handlers on thousands of random and mutated requests: each ends in
/// success or a clear gRPC status, never another exception, and the board stays readable with
/// finite metrics.
/// </summary>
[Trait("Tier", "unit")]
public sealed class CoordinatorHandlerFuzzTests
{
    private static readonly StatusCode[] Clear = [StatusCode.InvalidArgument, StatusCode.FailedPrecondition, StatusCode.NotFound, StatusCode.ResourceExhausted];

    [Fact]
    public async Task Random_and_mutated_requests_end_in_a_clear_status()
    {
        var board = new JobBoard(TimeProvider.System);
        var service = new CoordinatorService(board, new CoordinatorOptions { WorkersMax = 50 });
        var context = new TestCallContext(CancellationToken.None);
        await service.RegisterParameterServer(new RegisterParameterServerRequest { Address = "http://127.0.0.1:9" }, context);
        var workers = new List<string>();
        for (int w = 0; w < 2; w++)
            workers.Add((await service.RegisterWorker(new RegisterWorkerRequest { Host = "h", Device = "cpu", ProcessId = w }, context)).WorkerId);
        var job = board.Submit(new JobSpecification { Workers = 2, Epochs = 3 });
        var assignments = workers.Select(w => service.GetAssignment(new GetAssignmentRequest { WorkerId = w, WaitMillis = 5000 }, context)).ToList();
        await Task.WhenAll(assignments);
        var outcomes = new Dictionary<string, int>();

        for (int i = 0; i < 3000; i++)
        {
            var random = new Random(8_000_000 + i);
            string outcome;
            try
            {
                await RandomCall(random, service, context, job.Id, workers);
                outcome = "OK";
            }
            catch (RpcException e)
            {
                Assert.True(Clear.Contains(e.StatusCode), $"case {i} (seed 8): {e.StatusCode}: {e.Status.Detail}");
                Assert.False(string.IsNullOrWhiteSpace(e.Status.Detail), $"case {i}: no message");
                outcome = e.StatusCode.ToString();
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} (seed 8) crashed the handler: {e}");
                throw;
            }
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        }

        Assert.True(outcomes.GetValueOrDefault("OK") > 100, string.Join(", ", outcomes));
        Assert.True(outcomes.GetValueOrDefault("InvalidArgument") > 100, string.Join(", ", outcomes));
        var results = board.Read((jobs, _) => jobs.Values.SelectMany(j => j.Results).ToList());
        Assert.All(results, r => Assert.True(double.IsFinite(r.Accuracy) && double.IsFinite(r.TestLoss) && double.IsFinite(r.F1), r.ToString()));
        Assert.Equal(job.Id, board.Read((jobs, _) => jobs[job.Id].Id));
    }

    private static async Task RandomCall(Random random, CoordinatorService service, ServerCallContext context, string jobId, List<string> workers)
    {
        string job = random.Next(5) == 0 ? Fuzz.RandomString(random, 10) : jobId;
        int rank = Pick(random, 0, 1, 0, 1, -1, 2, int.MaxValue, int.MinValue);
        int epoch = Pick(random, 0, 1, 2, -1, 3, int.MaxValue);
        string worker = random.Next(4) == 0 ? Fuzz.RandomString(random, 12) : workers[random.Next(workers.Count)];
        switch (random.Next(10))
        {
            case 0:
                await service.RegisterWorker(new RegisterWorkerRequest
                {
                    Host = random.Next(5) == 0 ? new string('h', 300) : Fuzz.RandomString(random, 20),
                    Device = Pick(random, "cpu", "cuda:0", "", "cuda:-1", "gpu", Fuzz.RandomString(random, 8)),
                    ProcessId = random.Next(),
                }, context);
                break;
            case 1:
                await service.RegisterParameterServer(new RegisterParameterServerRequest
                {
                    Address = Pick(random, "http://127.0.0.1:9", "ftp://x", "", "https://[::1]:5", Fuzz.RandomString(random, 30), "http://" + new string('a', 3000)),
                }, context);
                break;
            case 2:
                await service.Heartbeat(new HeartbeatRequest { WorkerId = worker }, context);
                break;
            case 3:
                await service.GetAssignment(new GetAssignmentRequest { WorkerId = random.Next(3) == 0 ? worker : Fuzz.RandomString(random, 8), WaitMillis = Pick(random, 0, -5, 1, int.MinValue) }, context);
                break;
            case 4:
                await service.GetShard(new GetShardRequest { JobId = job, Rank = rank, Epoch = epoch, TrainSampleCount = Pick(random, 6000, 6000, 0, -1, 1, int.MaxValue, 5999) }, context);
                break;
            case 5:
                await service.ReportProgress(new ReportProgressRequest
                {
                    JobId = job, Rank = rank, Epoch = epoch, StepsDone = Pick(random, 0, 5, -1, int.MaxValue), StepsTotal = Pick(random, 5, 0, -1, int.MaxValue),
                    LossSum = Pick(random, 1.5, double.NaN, double.PositiveInfinity, -1, 1e308), SampleCount = Pick(random, 10L, 0, -1, long.MaxValue),
                }, context);
                break;
            case 6 or 7:
                int classes = Pick(random, 10, 10, 0, -1, 1, 1001, 3);
                var request = new ReportEvaluationRequest { JobId = job, Rank = rank, Epoch = epoch, ClassCount = classes, LossSum = Pick(random, 3.0, double.NaN, -1, double.MaxValue) };
                int cells = Pick(random, Math.Max(0, classes) * Math.Max(0, classes), 100, 0, 7);
                for (int c = 0; c < Math.Min(cells, 10_000); c++) request.Confusion.Add(Pick(random, 1L, 0, 5, -1, long.MaxValue));
                await service.ReportEvaluation(request, context);
                break;
            case 8:
                var lease = new LeaseShardRequest
                {
                    JobId = job, Rank = rank, Epoch = epoch, Step = Pick(random, 0L, 1, 2, -1, long.MaxValue, long.MinValue),
                    TrainSampleCount = Pick(random, 6000, 0, -1, int.MaxValue),
                    Applied = new AppliedSteps(),
                };
                if (random.Next(2) == 0) lease.Applied.Steps.Add(new AppliedStep { Step = Pick(random, 0L, -1, 1, long.MaxValue), Ranks = { Pick(random, 0, 1, -1, 7, int.MaxValue) } });
                await service.LeaseShard(lease, context);
                break;
            default:
                // Mutated wire bytes: what survives protobuf parsing reaches the handler.
                var valid = new ReportProgressRequest { JobId = jobId, Rank = 0, Epoch = 0, StepsDone = 1, StepsTotal = 5, LossSum = 2, SampleCount = 64 }.ToByteArray();
                ReportProgressRequest parsed;
                try { parsed = ReportProgressRequest.Parser.ParseFrom(Fuzz.Mutate(random, valid)); }
                catch (InvalidProtocolBufferException) { return; }
                await service.ReportProgress(parsed, context);
                break;
        }
    }

    private static T Pick<T>(Random random, params T[] values) => values[random.Next(values.Length)];
}
