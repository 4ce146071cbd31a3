using k8s;
using k8s.Models;
using YamlDotNet.Core;

namespace Cluster.Tests.Unit.Deploy;

/// <summary>
/// Offline validation of Kubernetes manifests against the Kubernetes API schema, as compiled into
/// the official .NET client's models (generated from the Kubernetes OpenAPI document): every
/// document must name a known apiVersion and kind, and strict loading refuses any field the
/// schema does not have and any value of the wrong type.
/// </summary>
public static class KubernetesManifests
{
    /// <summary>The objects of a YAML stream; throws <see cref="InvalidDataException"/> naming the source, line and field.</summary>
    public static IReadOnlyList<IKubernetesObject> Load(string yaml, string source)
    {
        List<object> objects;
        try
        {
            objects = KubernetesYaml.LoadAllFromString(yaml, typeMap: null, strict: true);
        }
        catch (YamlException e)
        {
            string detail = e.InnerException is { } inner ? $"{e.Message} ({inner.Message})" : e.Message;
            throw new InvalidDataException($"{source}:{e.Start.Line}:{e.Start.Column}: {detail}", e);
        }
        catch (KeyNotFoundException e)
        {
            throw new InvalidDataException($"{source}: a document's apiVersion/kind is not a Kubernetes type ({e.Message})", e);
        }
        var result = new List<IKubernetesObject>();
        foreach (object item in objects)
        {
            if (item is not IKubernetesObject<V1ObjectMeta> resource)
                throw new InvalidDataException($"{source}: {item.GetType().Name} is not a resource with metadata");
            if (string.IsNullOrEmpty(resource.Metadata?.Name))
                throw new InvalidDataException($"{source}: a {resource.Kind} has no metadata.name; expected one");
            result.Add(resource);
        }
        return result;
    }

    /// <summary>Every document of every .yaml file in a directory.</summary>
    public static IReadOnlyList<IKubernetesObject> LoadDirectory(string directory) =>
        [.. Directory.EnumerateFiles(directory, "*.yaml").Order(StringComparer.Ordinal).SelectMany(path => Load(File.ReadAllText(path), Path.GetFileName(path)))];
}
