using Cluster.Sdk;
using Cluster.Shared.Jobs;
using Cluster.Worker.Tasks;
using TorchSharp;

namespace Cluster.Tests.Unit.Sdk;

/// <summary>Loading a task type from an assembly by path and name: every way it can be wrong gets an error naming it.</summary>
[Trait("Tier", "unit")]
public sealed class UserTaskLoaderTests
{
    private static readonly string WorkerAssembly = typeof(GanTask).Assembly.Location;
    private static readonly TaskContext Context = new(null, 1, 0, 0, torch.CPU);

    [Fact]
    public void A_missing_file_names_the_path() =>
        Assert.StartsWith("assembly: '/no/such/Task.dll' does not exist on this worker",
            Assert.Throws<FileNotFoundException>(() => UserTaskLoader.Create("/no/such/Task.dll", "A.B", Context)).Message);

    [Fact]
    public void A_file_that_is_not_an_assembly_is_refused()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "not a dll");
            Assert.StartsWith($"assembly: '{path}' is not a .NET assembly",
                Assert.Throws<InvalidOperationException>(() => UserTaskLoader.Create(path, "A.B", Context)).Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void A_missing_type_lists_the_task_types_of_the_assembly()
    {
        string message = Assert.Throws<InvalidOperationException>(() => UserTaskLoader.Create(WorkerAssembly, "Cluster.Worker.Tasks.Nope", Context)).Message;
        Assert.StartsWith("type: 'Cluster.Worker.Tasks.Nope' is not in assembly", message);
        Assert.Contains("Cluster.Worker.Tasks.GanTask", message);
    }

    [Fact]
    public void A_type_that_is_not_a_task_is_refused() =>
        Assert.Contains("is not a public, non-abstract class implementing Cluster.Sdk.ITrainingTask",
            Assert.Throws<InvalidOperationException>(() => UserTaskLoader.Create(WorkerAssembly, "Cluster.Worker.Tasks.Losses", Context)).Message);

    [Fact]
    public void A_task_without_a_usable_constructor_is_refused() =>
        Assert.StartsWith("type: 'Cluster.Worker.Tasks.GanTask' has no public constructor taking a Cluster.Sdk.TaskContext",
            Assert.Throws<InvalidOperationException>(() => UserTaskLoader.Create(WorkerAssembly, "Cluster.Worker.Tasks.GanTask", Context)).Message);

    [Fact]
    public void A_job_with_an_assembly_needs_a_type_and_the_ps_scheme()
    {
        var errors = new JobSpecification { AssemblyPath = "/x/Task.dll", Scheme = "allreduce", Model = "not-in-the-zoo" }.Validate();
        Assert.Contains(errors, e => e.StartsWith("type: missing", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("scheme: 'allreduce' is not supported for a task from a user's assembly", StringComparison.Ordinal));
        Assert.DoesNotContain(errors, e => e.StartsWith("model:", StringComparison.Ordinal));
        Assert.Contains(new JobSpecification { TaskType = "A.B" }.Validate(), e => e.StartsWith("type: 'A.B' given without an assembly", StringComparison.Ordinal));
        Assert.Empty(new JobSpecification { AssemblyPath = "/x/Task.dll", TaskType = "A.B" }.Validate());
        var back = JobSpecification.FromProto(new JobSpecification { AssemblyPath = "/x/Task.dll", TaskType = "A.B" }.ToProto(), 2);
        Assert.Equal(("/x/Task.dll", "A.B"), (back.AssemblyPath, back.TaskType));
    }
}
