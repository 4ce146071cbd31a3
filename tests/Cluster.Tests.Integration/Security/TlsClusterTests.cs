using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Shared.Security;
using Cluster.Tests.Integration.Support;

namespace Cluster.Tests.Integration.Security;

/// <summary>
/// A cluster spread over separate `cluster` processes with the certificates `cluster certs`
/// makes: every endpoint serves TLS, members must present a certificate of the cluster CA
/// (mutual TLS), a job trains through it; a worker whose certificate another CA signed is refused.
/// </summary>
[Trait("Tier", "e2e")]
public sealed class TlsClusterTests : IDisposable
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private readonly string _directory = Directory.CreateTempSubdirectory("cluster-tls-test-").FullName;

    [Fact]
    public async Task A_job_trains_over_mutual_tls_with_generated_certificates_and_a_member_of_another_ca_is_refused()
    {
        string certs = Path.Combine(_directory, "certs");
        var (certsExit, certsOut, certsErr) = await ClusterCommand.RunAsync(Startup, "certs", "--out", certs);
        Assert.True(certsExit == 0, certsErr);
        Assert.Contains($"Wrote a development CA and a member certificate", certsOut, StringComparison.Ordinal);
        string[] tls = ["--tls-dir", certs, "--mtls"];

        using var coordinator = ClusterCommand.Start(["coordinator", .. tls]);
        var urls = Cli.Local.LocalCluster.ParseUrls(await coordinator.WaitForLineAsync("CLUSTER-READY", Startup));
        Assert.StartsWith("https://", urls["grpc"], StringComparison.Ordinal);
        Assert.StartsWith("https://", urls["http"], StringComparison.Ordinal);
        using var server = ClusterCommand.Start(["ps", "--coordinator", urls["grpc"], .. tls]);
        Assert.StartsWith("grpc=https://", await server.WaitForLineAsync("CLUSTER-READY", Startup), StringComparison.Ordinal);
        using var worker = ClusterCommand.Start(["worker", "--coordinator", urls["grpc"], "--threads", "1", "--once", .. tls]);

        // A member with a certificate of another CA (it trusts the cluster's CA, so only the server's check can stop it).
        string rogue = Path.Combine(_directory, "rogue");
        CertificateFactory.WriteDevelopmentSet(rogue, [], TimeSpan.FromDays(1));
        File.Copy(Path.Combine(certs, CertificateFactory.AuthorityFile), Path.Combine(rogue, CertificateFactory.AuthorityFile), overwrite: true);
        var (rogueExit, _, rogueErr) = await ClusterCommand.RunAsync(Startup, "worker", "--coordinator", urls["grpc"], "--tls-dir", rogue, "--connect-timeout", "3", "--once");
        Assert.NotEqual(0, rogueExit);
        Assert.Contains($"coordinator at {urls["grpc"]} refused the connection", rogueErr, StringComparison.Ordinal);

        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(4),
            "submit", "--api", urls["http"], "--tls-dir", certs, "--wait", "--output", "json",
            "--model", "mlp", "--workers", "1", "--epochs", "1", "--train-limit", "2000", "--test-limit", "500");
        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}\n{coordinator.Stderr}\n{worker.Stderr}");
        using (var job = JsonDocument.Parse(stdout))
        {
            Assert.Equal("succeeded", job.RootElement.GetProperty("state").GetString());
            Assert.InRange(job.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble(), 0.5, 1.0);
        }

        // Only the real worker ever joined.
        var (member, authority) = ClusterSecurity.LoadDirectory(certs);
        var security = TestSecurity.Loopback with { Certificate = member, CertificateAuthority = authority };
        using var api = ClusterTransport.HttpClient(urls["http"], security, TimeSpan.FromSeconds(30));
        var cluster = await api.GetFromJsonAsync<JsonElement>("api/cluster");
        Assert.Equal(1, cluster.GetProperty("workers").GetArrayLength());

        // A client that does not trust the cluster CA cannot even talk to the API.
        using var untrusting = new HttpClient();
        var refused = await Assert.ThrowsAsync<HttpRequestException>(() => untrusting.GetAsync(urls["http"] + "/api/cluster"));
        Assert.IsType<System.Security.Authentication.AuthenticationException>(refused.InnerException);
        Assert.Equal(0, await worker.WaitAsync(TimeSpan.FromSeconds(60)));
        // Its leases went on the coordinator's lease port, over TLS too (a port it could not use would have left them to gRPC, saying why).
        Assert.Contains("leases go on the coordinator's lease port", worker.Stdout + worker.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_all_reduce_job_trains_with_its_ring_data_ports_over_mutual_tls()
    {
        string certs = Path.Combine(_directory, "certs");
        Assert.Equal(0, (await ClusterCommand.RunAsync(Startup, "certs", "--out", certs)).ExitCode);
        var (exitCode, stdout, stderr) = await ClusterCommand.RunAsync(TimeSpan.FromMinutes(4),
            "local", "--scheme", "allreduce", "--tls-dir", certs, "--mtls", "--output", "json",
            "--model", "mlp", "--workers", "2", "--epochs", "1", "--train-limit", "2000", "--test-limit", "500");
        Assert.True(exitCode == 0, $"exit code {exitCode}\n{stderr}");
        using var job = JsonDocument.Parse(stdout);
        Assert.InRange(job.RootElement.GetProperty("epochs")[0].GetProperty("accuracy").GetDouble(), 0.5, 1.0);
    }

    [Fact]
    public async Task A_role_bound_beyond_loopback_without_certificates_refuses_to_start_unless_told_what_it_gives_up()
    {
        var (exitCode, _, stderr) = await ClusterCommand.RunAsync(Startup, "coordinator", "--bind", "0.0.0.0");

        Assert.Equal(2, exitCode);
        Assert.Contains("bind: 0.0.0.0 is not a loopback address and no TLS certificates were given", stderr, StringComparison.Ordinal);
        Assert.Contains("--allow-plaintext", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_role_without_a_secret_refuses_to_start_and_says_how_to_give_one()
    {
        var (exitCode, _, stderr) = await RunWithoutSecretAsync("worker", "--coordinator", "http://127.0.0.1:9");

        Assert.Equal(2, exitCode);
        Assert.Contains("secret: none given", stderr, StringComparison.Ordinal);
        Assert.Contains("--secret-file FILE, CLUSTER_SECRET=SECRET or --secret SECRET", stderr, StringComparison.Ordinal);
    }

    private static async Task<(int, string, string)> RunWithoutSecretAsync(params string[] arguments)
    {
        using var command = ClusterCommand.StartWith(new Dictionary<string, string?> { ["CLUSTER_SECRET"] = null }, arguments);
        int exitCode = await command.WaitAsync(Startup);
        return (exitCode, command.Stdout, command.Stderr);
    }

    public void Dispose()
    {
        try { Directory.Delete(_directory, recursive: true); }
        catch (IOException) { }
    }
}
