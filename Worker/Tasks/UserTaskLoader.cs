using System.Reflection;
using System.Runtime.Loader;
using Cluster.Sdk;

namespace Cluster.Worker.Tasks;

/// <summary>
/// Builds a user's task from their assembly: loads the assembly from a path into its own load
/// context, finds the type by full name, checks that it implements <see cref="ITrainingTask"/>
/// and calls its public constructor taking a <see cref="TaskContext"/> (or a parameterless one).
/// Loading an assembly runs its code with the worker's rights: only members holding the
/// cluster secret can submit jobs (see SECURITY.md).
/// </summary>
public static class UserTaskLoader
{
    public static ITrainingTask Create(string assemblyPath, string typeName, TaskContext context)
    {
        var type = FindType(assemblyPath, typeName);
        object instance;
        try
        {
            instance = type.GetConstructor([typeof(TaskContext)]) is { } withContext
                ? withContext.Invoke([context])
                : type.GetConstructor(Type.EmptyTypes) is { } parameterless
                    ? parameterless.Invoke([])
                    : throw new InvalidOperationException(
                        $"type: '{typeName}' has no public constructor taking a Cluster.Sdk.TaskContext or nothing; expected one of them");
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw new InvalidOperationException($"type: '{typeName}' failed in its constructor: {e.InnerException.Message}", e.InnerException);
        }
        return (ITrainingTask)instance;
    }

    /// <summary>The type, after checking the file, the assembly, the name and the interface.</summary>
    public static Type FindType(string assemblyPath, string typeName)
    {
        string path = Path.GetFullPath(assemblyPath);
        if (!File.Exists(path))
            throw new FileNotFoundException($"assembly: '{path}' does not exist on this worker; expected the path of a .NET assembly (.dll) holding the task type", path);
        Assembly assembly;
        try
        {
            assembly = new UserAssemblyContext(path).LoadFromAssemblyPath(path);
        }
        catch (BadImageFormatException e)
        {
            throw new InvalidOperationException($"assembly: '{path}' is not a .NET assembly ({e.Message}); expected a .dll built for .NET", e);
        }
        var type = assembly.GetType(typeName, throwOnError: false)
            ?? throw new InvalidOperationException(
                $"type: '{typeName}' is not in assembly '{path}'; expected the full name (Namespace.Type) of a public class, one of: {TaskTypes(assembly)}");
        if (!typeof(ITrainingTask).IsAssignableFrom(type) || type.IsAbstract || !type.IsPublic)
            throw new InvalidOperationException(
                $"type: '{typeName}' in '{path}' is not a public, non-abstract class implementing {typeof(ITrainingTask).FullName}; expected one of: {TaskTypes(assembly)}");
        return type;
    }

    private static string TaskTypes(Assembly assembly)
    {
        Type[] types;
        try { types = assembly.GetExportedTypes(); }
        catch (ReflectionTypeLoadException e) { types = [.. e.Types.OfType<Type>()]; }
        var names = types.Where(t => typeof(ITrainingTask).IsAssignableFrom(t) && !t.IsAbstract).Select(t => t.FullName).ToList();
        return names.Count == 0 ? $"(none: no public type implements {typeof(ITrainingTask).FullName})" : string.Join(", ", names);
    }

    /// <summary>
    /// The user's assembly and its own dependencies. Assemblies the worker already has (the
    /// SDK, TorchSharp, the framework) come from the worker, so that ITrainingTask and Tensor are
    /// the same types on both sides.
    /// </summary>
    private sealed class UserAssemblyContext(string path) : AssemblyLoadContext($"user-task:{Path.GetFileName(path)}")
    {
        private readonly AssemblyDependencyResolver _resolver = new(path);

        protected override Assembly? Load(AssemblyName assemblyName)
        {
            try
            {
                return Default.LoadFromAssemblyName(assemblyName);
            }
            catch (FileNotFoundException)
            {
                return _resolver.ResolveAssemblyToPath(assemblyName) is { } dependency ? LoadFromAssemblyPath(dependency) : null;
            }
        }

        protected override IntPtr LoadUnmanagedDll(string unmanagedDllName) =>
            _resolver.ResolveUnmanagedDllToPath(unmanagedDllName) is { } native ? LoadUnmanagedDllFromPath(native) : IntPtr.Zero;
    }
}
