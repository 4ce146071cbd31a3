using System.Runtime.InteropServices;
using Cluster.ParameterServer;
using Cluster.ParameterServer.Services;
using Cluster.ParameterServer.Training;
using Cluster.Protos;
using Google.Protobuf;
using Grpc.Core;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// The parameter server's gRPC handlers on thousands of random and mutated calls: each ends in
/// success or in a clear gRPC status (never another exception), and a job's model is never
/// poisoned: its weights stay finite and the job still completes a step afterwards.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ParameterServerHandlerFuzzTests
{
    private const int Elements = 64;
    // Aborted: a push for a step the server has not reached (the worker resynchronises with its version).
    private static readonly StatusCode[] Clear = [StatusCode.InvalidArgument, StatusCode.FailedPrecondition, StatusCode.NotFound, StatusCode.ResourceExhausted, StatusCode.Aborted];

    [Fact]
    public async Task Random_and_mutated_calls_end_in_a_clear_status_and_never_poison_the_model()
    {
        var store = new ParameterStore();
        var service = new ParameterServerService(store, new ParameterServerOptions { ModelBytesMax = 1 << 20, JobMemoryBytesMax = 16 << 20, JobsMax = 8 });
        await service.Initialize(new ListStream<InitializeMessage>(InitializeMessages(ValidHeader("job-a"), Floats(Elements, 1f))), Context());
        var job = store.Find("job-a")!;
        byte[] validPush = new PushMessage { Header = new PushHeader { JobId = "job-a", Rank = 0, Step = 0, SampleCount = 4 } }.ToByteArray();
        var outcomes = new Dictionary<string, int>();

        for (int i = 0; i < 3000; i++)
        {
            var random = new Random(7_000_000 + i);
            string outcome;
            try
            {
                await RandomCall(random, service, job, validPush);
                outcome = "OK";
            }
            catch (RpcException e)
            {
                Assert.True(Clear.Contains(e.StatusCode), $"case {i} (seed 7): {e.StatusCode}: {e.Status.Detail}");
                Assert.False(string.IsNullOrWhiteSpace(e.Status.Detail), $"case {i}: no message");
                outcome = e.StatusCode.ToString();
            }
            catch (OperationCanceledException)
            {
                outcome = "cancelled pull"; // a pull for a future version, ended by its deadline as gRPC would
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} (seed 7) crashed the handler: {e}");
                throw;
            }
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            Assert.True(job.WeightsAsFloats.ToArray().All(float.IsFinite), $"case {i} (seed 7) poisoned the weights");
        }

        // Every kind of outcome happened, so the fuzzing reached past the first checks.
        Assert.True(outcomes.GetValueOrDefault("OK") > 100, string.Join(", ", outcomes));
        Assert.True(outcomes.GetValueOrDefault("InvalidArgument") > 100, string.Join(", ", outcomes));
        Assert.True(outcomes.GetValueOrDefault("FailedPrecondition") > 100, string.Join(", ", outcomes));
        Assert.True(outcomes.GetValueOrDefault("NotFound") > 10, string.Join(", ", outcomes));
        // The job still works: a clean step from both ranks completes.
        long version = job.Version;
        foreach (int rank in new[] { 0, 1 })
            if (job.Version == version) await TryPush(service, rank, version);
        await job.WaitForVersionAsync(version + 1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(version + 1, job.Version);
    }

    /// <summary>A clean push; a rank whose fuzzed push already counted for this step is left as it is.</summary>
    private static async Task TryPush(ParameterServerService service, int rank, long step)
    {
        try
        {
            await service.PushGradients(new ListStream<PushMessage>(PushMessages(new PushHeader { JobId = "job-a", Rank = rank, Step = step, SampleCount = 4 }, Floats(Elements, 0.01f))), Context());
        }
        catch (RpcException e) when (e.Status.Detail.Contains("already pushed", StringComparison.Ordinal))
        {
        }
    }

    private static async Task RandomCall(Random random, ParameterServerService service, JobParameters job, byte[] validPush)
    {
        switch (random.Next(5))
        {
            case 0:
                var header = ValidHeader(random.Next(3) == 0 ? "job-a" : "job-" + random.Next(20));
                header.WorldSize = Pick(random, 1, 2, 0, -1, 1025, int.MaxValue);
                if (random.Next(2) == 0) header.Layout.Tensors[0].Shape[0] = Pick(random, Elements, 0, -3, 1L << 40, long.MaxValue, 300_000, 5);
                if (random.Next(4) == 0) header.Layout.Tensors.Add(new TensorSpec { Name = Fuzz.RandomString(random, 40), Shape = { Pick(random, 1, 2, -1, 0) } });
                if (random.Next(4) == 0) header.Optimizer.LearningRate = Pick(random, double.NaN, -1, 0, 1e300);
                if (random.Next(4) == 0) header.Optimizer.Kind = Fuzz.RandomString(random, 6);
                if (random.Next(5) == 0) header.Dtype = (DType)random.Next(-1, 5);
                if (random.Next(8) == 0) header.Optimizer = null;
                if (random.Next(8) == 0) header.Layout = null;
                var messages = InitializeMessages(header, Floats(random.Next(0, 2 * Elements), 1f)).ToList();
                if (random.Next(4) == 0) messages.RemoveAt(0);
                await service.Initialize(new ListStream<InitializeMessage>(messages), Context());
                break;
            case 1 or 2:
                var push = new PushHeader
                {
                    JobId = random.Next(6) == 0 ? "job-" + random.Next(20) : "job-a",
                    Rank = Pick(random, 0, 1, 0, 1, 2, -1, int.MaxValue),
                    Step = Pick(random, job.Version, job.Version, job.Version + 1, job.Version - 1, -1, long.MaxValue),
                    SampleCount = Pick(random, 4, 4, 0, -1, 70_000, int.MaxValue),
                    Dtype = random.Next(8) == 0 ? (DType)random.Next(-1, 5) : DType.Float32,
                };
                float value = random.Next(6) == 0 ? Pick(random, float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue) : 0.01f;
                var pushes = PushMessages(push, Floats(Pick(random, Elements, Elements, Elements / 2, 0, Elements + 1), value)).ToList();
                if (random.Next(4) == 0) MutateChunks(random, pushes);
                await service.PushGradients(new ListStream<PushMessage>(pushes), Context());
                break;
            case 3:
                long minVersion = Pick(random, 0, -5, job.Version, job.Version + 1, long.MaxValue);
                using (var deadline = new CancellationTokenSource(TimeSpan.FromMilliseconds(minVersion > job.Version ? 5 : 5000)))
                {
                    var writer = new ListWriter<PullMessage>();
                    await service.PullParameters(new PullRequest { JobId = random.Next(5) == 0 ? Fuzz.RandomString(random, 8) : "job-a", MinVersion = minVersion }, writer, Context(deadline.Token));
                    Assert.Equal(PullMessage.BodyOneofCase.Header, writer.Written[0].BodyCase);
                }
                break;
            default:
                // Mutated wire bytes: what survives protobuf parsing reaches the handler.
                PushMessage parsed;
                try { parsed = PushMessage.Parser.ParseFrom(Fuzz.Mutate(random, validPush)); }
                catch (InvalidProtocolBufferException) { return; }
                if (parsed.Header is { JobId: "job-a" } h) h.Step = job.Version;
                await service.PushGradients(new ListStream<PushMessage>([parsed, .. PushMessages(new PushHeader(), Floats(Elements, 0.01f)).Skip(1)]), Context());
                break;
        }
    }

    private static void MutateChunks(Random random, List<PushMessage> pushes)
    {
        foreach (var message in pushes.Where(m => m.BodyCase == PushMessage.BodyOneofCase.Chunk))
        {
            if (random.Next(2) == 0) message.Chunk.OffsetElements = Pick(random, -1, 1, 3, long.MaxValue, Elements);
            if (random.Next(2) == 0) message.Chunk.Data = ByteString.CopyFrom(Fuzz.RandomBytes(random, 300));
        }
        if (random.Next(3) == 0) pushes.Add(pushes[0]);
    }

    private static T Pick<T>(Random random, params T[] values) => values[random.Next(values.Length)];

    private static InitializeHeader ValidHeader(string jobId)
    {
        var layout = new TensorLayout();
        layout.Tensors.Add(new TensorSpec { Name = "w", Shape = { Elements }, Dtype = DType.Float32 });
        return new InitializeHeader
        {
            JobId = jobId, WorldSize = 2, Layout = layout, RangeStart = 0, RangeElements = Elements,
            Optimizer = new OptimizerConfig { Kind = "sgd", LearningRate = 0.1 },
        };
    }

    private static byte[] Floats(int count, float value) => MemoryMarshal.AsBytes(Enumerable.Repeat(value, count).ToArray().AsSpan()).ToArray();

    private static IEnumerable<InitializeMessage> InitializeMessages(InitializeHeader header, byte[] data) =>
        [new InitializeMessage { Header = header }, .. Shared.Wire.TensorWire.Chunks(data).Select(c => new InitializeMessage { Chunk = c })];

    private static IEnumerable<PushMessage> PushMessages(PushHeader header, byte[] data) =>
        [new PushMessage { Header = header }, .. Shared.Wire.TensorWire.Chunks(data).Select(c => new PushMessage { Chunk = c })];

    private static TestCallContext Context(CancellationToken cancellationToken = default) => new(cancellationToken);
}
