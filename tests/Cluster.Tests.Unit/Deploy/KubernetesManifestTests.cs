using k8s;
using k8s.Models;

namespace Cluster.Tests.Unit.Deploy;

/// <summary>
/// deploy/k8s validates against the Kubernetes schema (no cluster needed), and describes what
/// the README promises: the coordinator as Deployment and Service, the parameter servers as a
/// StatefulSet behind a headless Service, GPU workers, the Secret, volumes, probes on the
/// health endpoints.
/// </summary>
[Trait("Tier", "unit")]
public sealed class KubernetesManifestTests
{
    private static readonly string Directory = Path.Combine(RepositoryRoot(), "deploy", "k8s");
    private static readonly IReadOnlyList<IKubernetesObject> Objects = KubernetesManifests.LoadDirectory(Directory);

    [Fact]
    public void Every_manifest_validates_against_the_kubernetes_schema_and_names_the_resources_the_cluster_needs()
    {
        Assert.Equal(
            ["Deployment/coordinator", "Deployment/worker", "Namespace/cluster", "PersistentVolumeClaim/checkpoints", "PersistentVolumeClaim/coordinator-state", "PersistentVolumeClaim/datasets",
             "Secret/cluster-secret", "Service/coordinator", "Service/parameter-server", "StatefulSet/parameter-server"],
            Objects.Select(o => $"{o.Kind}/{((IMetadata<V1ObjectMeta>)o).Metadata.Name}").Order(StringComparer.Ordinal));
        Assert.All(Objects.OfType<IMetadata<V1ObjectMeta>>().Where(o => o is not V1Namespace), o => Assert.Equal("cluster", o.Metadata.NamespaceProperty));
    }

    [Fact]
    public void Parameter_servers_are_a_stateful_set_behind_a_headless_service_and_advertise_their_stable_names()
    {
        var servers = Objects.OfType<V1StatefulSet>().Single();
        var headless = Objects.OfType<V1Service>().Single(s => s.Metadata.Name == servers.Spec.ServiceName);
        Assert.Equal("None", headless.Spec.ClusterIP);
        Assert.Equal(headless.Spec.Selector, servers.Spec.Template.Metadata.Labels.Where(l => headless.Spec.Selector.ContainsKey(l.Key)));
        var args = servers.Spec.Template.Spec.Containers.Single().Args;
        Assert.Equal($"https://$(POD_NAME).{headless.Metadata.Name}:5001", args[args.IndexOf("--advertise") + 1]);
    }

    [Fact]
    public void Workers_request_one_gpu_each_and_mount_the_checkpoint_and_data_claims()
    {
        var workers = Objects.OfType<V1Deployment>().Single(d => d.Metadata.Name == "worker");
        var container = workers.Spec.Template.Spec.Containers.Single();
        Assert.Equal("1", container.Resources.Limits["nvidia.com/gpu"].ToString());
        var claims = workers.Spec.Template.Spec.Volumes.Where(v => v.PersistentVolumeClaim is not null).Select(v => v.PersistentVolumeClaim.ClaimName).ToList();
        Assert.Equal(["checkpoints", "datasets"], claims.Order(StringComparer.Ordinal));
        Assert.All(claims, claim => Assert.Contains(Objects.OfType<V1PersistentVolumeClaim>(), c => c.Metadata.Name == claim));
    }

    [Fact]
    public void The_coordinator_keeps_its_state_file_on_its_own_claim_so_that_a_replacement_pod_resumes_the_jobs()
    {
        var coordinator = Objects.OfType<V1Deployment>().Single(d => d.Metadata.Name == "coordinator");
        var container = coordinator.Spec.Template.Spec.Containers.Single();
        string state = container.Args[container.Args.IndexOf("--state") + 1];
        var mount = container.VolumeMounts.Single(m => state.StartsWith(m.MountPath + "/", StringComparison.Ordinal));
        var volume = coordinator.Spec.Template.Spec.Volumes.Single(v => v.Name == mount.Name);
        var claim = Objects.OfType<V1PersistentVolumeClaim>().Single(c => c.Metadata.Name == volume.PersistentVolumeClaim.ClaimName);
        Assert.Equal(["ReadWriteOnce"], claim.Spec.AccessModes);
        // One writer at a time: the old pod stops before the new one starts.
        Assert.Equal("Recreate", coordinator.Spec.Strategy.Type);
    }

    [Fact]
    public void Every_role_has_liveness_and_readiness_probes_on_the_health_endpoints_of_a_declared_port_and_reads_the_secret()
    {
        var pods = Objects.OfType<V1Deployment>().Select(d => d.Spec.Template).Concat(Objects.OfType<V1StatefulSet>().Select(s => s.Spec.Template)).ToList();
        Assert.Equal(3, pods.Count);
        foreach (var pod in pods)
        {
            var container = pod.Spec.Containers.Single();
            Assert.Equal("/healthz", container.LivenessProbe.HttpGet.Path);
            Assert.Equal("/readyz", container.ReadinessProbe.HttpGet.Path);
            Assert.Contains(container.Ports, p => p.Name == container.ReadinessProbe.HttpGet.Port.Value);
            Assert.Contains("--secret-file", container.Args);
            Assert.Contains("--tls-dir", container.Args);
            Assert.Contains(pod.Spec.Volumes, v => v.Secret?.SecretName == "cluster-secret");
            Assert.True(pod.Spec.SecurityContext.RunAsNonRoot, $"{container.Name} runs as root");
        }
    }

    [Fact]
    public void Every_service_selects_the_pods_of_some_workload()
    {
        var templates = Objects.OfType<V1Deployment>().Select(d => d.Spec.Template).Concat(Objects.OfType<V1StatefulSet>().Select(s => s.Spec.Template)).ToList();
        foreach (var service in Objects.OfType<V1Service>())
            Assert.Contains(templates, t => service.Spec.Selector.All(s => t.Metadata.Labels.TryGetValue(s.Key, out var v) && v == s.Value));
        foreach (var deployment in Objects.OfType<V1Deployment>())
            Assert.All(deployment.Spec.Selector.MatchLabels, l => Assert.Equal(l.Value, deployment.Spec.Template.Metadata.Labels[l.Key]));
    }

    [Theory]
    [InlineData("  replicas: 1\n", "  replica: 1\n", "Property 'replica' not found on type 'k8s.Models.V1DeploymentSpec'")]
    [InlineData("path: /healthz, port: http, scheme: HTTPS", "path: /healthz, port: http, schema: HTTPS", "Property 'schema' not found on type 'k8s.Models.V1HTTPGetAction'")]
    [InlineData("  replicas: 1\n", "  replicas: [1]\n", "coordinator.yaml:")]
    [InlineData("kind: Deployment", "kind: Deploymnt", "apiVersion/kind is not a Kubernetes type")]
    public void A_manifest_with_a_wrong_field_fails_validation_naming_it(string original, string broken, string expected)
    {
        string yaml = File.ReadAllText(Path.Combine(Directory, "coordinator.yaml"));
        Assert.Contains(original, yaml, StringComparison.Ordinal);
        Assert.NotEmpty(KubernetesManifests.Load(yaml, "coordinator.yaml"));

        var error = Assert.Throws<InvalidDataException>(() => KubernetesManifests.Load(yaml.Replace(original, broken, StringComparison.Ordinal), "coordinator.yaml"));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
            if (File.Exists(Path.Combine(directory.FullName, "Cluster.sln"))) return directory.FullName;
        throw new InvalidOperationException($"no Cluster.sln above {AppContext.BaseDirectory}");
    }
}
