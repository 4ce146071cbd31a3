using System.Security.Cryptography;
using System.Text.Json;
using Cluster.Coordinator;
using Cluster.Protos;
using Cluster.Shared.Data;
using Cluster.Shared.Security;
using Cluster.Tests.Integration.Support;
using Grpc.Core;

namespace Cluster.Tests.Integration.EndToEnd;

/// <summary>The data service: workers that take the dataset from the coordinator instead of their own disk.</summary>
[Trait("Tier", "e2e")]
public sealed class DataServiceTests
{
    [Fact]
    public async Task Workers_with_data_source_coordinator_train_on_the_coordinators_files_fetched_once_into_their_cache()
    {
        string cache = Directory.CreateTempSubdirectory("cluster-cache-").FullName;
        try
        {
            var environment = new Dictionary<string, string?> { ["CLUSTER_SECRET"] = TestSecurity.Secret.Value, ["CLUSTER_CACHE_DIR"] = cache };
            using var command = ClusterCommand.StartWith(environment,
                "local", "--model", "mlp", "--workers", "2", "--epochs", "1", "--train-limit", "3000", "--test-limit", "1000",
                "--data-source", "coordinator", "--output", "json");
            int exitCode = await command.WaitAsync(TimeSpan.FromMinutes(4));
            Assert.True(exitCode == 0, $"exit code {exitCode}\n{command.Stderr}");
            using var result = JsonDocument.Parse(command.Stdout);
            Assert.InRange(result.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble(), 0.6, 1.0);

            // One cached copy, byte for byte the coordinator's files.
            string cached = Assert.Single(Directory.GetDirectories(Path.Combine(cache, "datasets")));
            Assert.StartsWith("fashion-mnist-", Path.GetFileName(cached), StringComparison.Ordinal);
            var originals = DatasetFiles.Files("fashion-mnist", DatasetFiles.Locate("fashion-mnist", null));
            Assert.Equal(4, originals.Count);
            foreach (string original in originals)
                Assert.Equal(SHA256.HashData(await File.ReadAllBytesAsync(original)), SHA256.HashData(await File.ReadAllBytesAsync(Path.Combine(cached, Path.GetFileName(original)))));
            Assert.Empty(Directory.GetDirectories(Path.Combine(cache, "datasets"), ".partial-*"));
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    [Fact]
    public async Task Fetching_the_dataset_of_an_unknown_job_is_refused_with_the_job_named()
    {
        await using var coordinator = await CoordinatorHost.StartAsync(new CoordinatorOptions { Security = TestSecurity.Loopback }, CancellationToken.None);
        using var channel = ClusterTransport.Channel(coordinator.GrpcUrl, TestSecurity.Loopback, "coordinator");
        var client = new DataService.DataServiceClient(channel);
        using var call = client.FetchDataset(new FetchDatasetRequest { JobId = "no-such-job" }, deadline: DateTime.UtcNow.AddSeconds(30));
        var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Contains("job_id: 'no-such-job' is not a job of this coordinator", error.Status.Detail, StringComparison.Ordinal);
    }
}
