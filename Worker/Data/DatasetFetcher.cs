using System.Security.Cryptography;
using System.Text;
using Cluster.Protos;
using Cluster.Shared.Data;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Cluster.Worker.Data;

/// <summary>Where a worker takes a job's dataset from.</summary>
public enum DataSource
{
    /// <summary>The local copy when there is one, else the coordinator's.</summary>
    Auto,
    /// <summary>Only a local copy: a job whose data is missing here fails.</summary>
    Local,
    /// <summary>Always the coordinator's copy (kept in the local cache).</summary>
    Coordinator,
}

/// <summary>
/// The worker's side of the data service (data.proto): fetches a job's dataset from the
/// coordinator into a local cache, <c>CACHE/datasets/NAME-DIGEST/</c>, where DIGEST is taken
/// over the manifest (names, sizes, SHA-256 of every file). Files go to a temporary directory
/// first; only when every size and digest matches is it renamed into place, so the cache never
/// holds a partial or corrupted dataset. A later job with the same files uses the cached copy
/// after checking its digests again.
/// </summary>
public static partial class DatasetFetcher
{
    public const int FilesMax = 64;
    public const long FileBytesMax = 64L << 30;
    private const int NameLengthMax = 255;

    /// <summary>The cache directory: $CLUSTER_CACHE_DIR, else $XDG_CACHE_HOME/cluster, else ~/.cache/cluster.</summary>
    public static string DefaultCacheDirectory() =>
        Environment.GetEnvironmentVariable("CLUSTER_CACHE_DIR") is { Length: > 0 } dir ? dir
        : Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? Path.Combine(xdg, "cluster")
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "cluster");

    /// <summary>
    /// The data directory (or corpus file) this worker should read the job's dataset from: the
    /// job's own when <paramref name="source"/> allows and the dataset is found here, else the
    /// cached copy fetched from the coordinator. Null: leave the job's data directory as it is.
    /// </summary>
    public static async Task<string?> PrepareAsync(
        JobSpec spec, string jobId, DataSource source, Protos.DataService.DataServiceClient client, string cacheDirectory,
        ILogger logger, TimeSpan callTimeout, CancellationToken cancellationToken)
    {
        if (source == DataSource.Local || !DatasetFiles.IsFileBased(spec.Dataset)) return null;
        if (source == DataSource.Auto)
        {
            try
            {
                DatasetFiles.Locate(spec.Dataset, spec.DataDir.Length == 0 ? null : spec.DataDir);
                return null;
            }
            catch (FileNotFoundException e)
            {
                Log.NotFoundLocally(logger, spec.Dataset, e.Message);
            }
        }
        // The whole transfer may take a while: the deadline is generous (a few GB over a slow link); cancellation stops it at once.
        using var call = client.FetchDataset(new FetchDatasetRequest { JobId = jobId },
            deadline: DateTime.UtcNow + callTimeout * 60, cancellationToken: cancellationToken);
        return await StoreAsync(call.ResponseStream, spec.Dataset, cacheDirectory, logger, cancellationToken);
    }

    /// <summary>
    /// Reads a FetchDataset answer (manifest, then chunks) into the cache, or finds the same
    /// dataset already cached there; returns its directory (or file, for a one-file corpus).
    /// </summary>
    public static async Task<string> StoreAsync(
        IAsyncStreamReader<FetchDatasetMessage> stream, string expectedDataset, string cacheDirectory, ILogger logger, CancellationToken cancellationToken)
    {
        if (!await stream.MoveNext(cancellationToken) || stream.Current.BodyCase != FetchDatasetMessage.BodyOneofCase.Manifest)
            throw new InvalidDataException("data service: the coordinator's answer did not start with a manifest");
        var manifest = stream.Current.Manifest;
        Validate(manifest, expectedDataset);
        string target = Path.Combine(cacheDirectory, "datasets", $"{manifest.Dataset}-{ManifestDigest(manifest)}");
        if (Directory.Exists(target) && await MatchesAsync(target, manifest, cancellationToken))
        {
            Log.UsingCached(logger, expectedDataset, target);
            return Location(target, manifest);
        }
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        string partial = Path.Combine(Path.GetDirectoryName(target)!, $".partial-{Guid.NewGuid():N}");
        Directory.CreateDirectory(partial);
        try
        {
            long bytes = await ReceiveAsync(stream, manifest, partial, cancellationToken);
            // Another worker on this machine may have cached the same dataset meanwhile: keep a whole copy, replace a damaged one.
            if (Directory.Exists(target) && !await MatchesAsync(target, manifest, cancellationToken)) Directory.Delete(target, recursive: true);
            if (Directory.Exists(target))
            {
                Log.UsingCached(logger, expectedDataset, target);
                return Location(target, manifest);
            }
            try { Directory.Move(partial, target); }
            catch (IOException) when (Directory.Exists(target))
            {
                // Another worker on this machine finished the same dataset first: use its copy if it is whole.
                if (!await MatchesAsync(target, manifest, cancellationToken)) throw;
            }
            Log.Fetched(logger, expectedDataset, manifest.Files.Count, bytes, target);
            return Location(target, manifest);
        }
        finally
        {
            if (Directory.Exists(partial)) Directory.Delete(partial, recursive: true);
        }
    }

    /// <summary>Checks a manifest before anything is written: file names, counts, sizes, digests.</summary>
    public static void Validate(DatasetManifest manifest, string expectedDataset)
    {
        if (manifest.Dataset != expectedDataset)
            throw new InvalidDataException($"data service: manifest dataset '{manifest.Dataset}'; expected '{expectedDataset}'");
        if (manifest.Files.Count is 0 or > FilesMax)
            throw new InvalidDataException($"data service: {manifest.Files.Count} files in the manifest; expected 1 to {FilesMax}");
        if (manifest.SingleFile && manifest.Files.Count != 1)
            throw new InvalidDataException($"data service: a single-file dataset with {manifest.Files.Count} files; expected 1");
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var file in manifest.Files)
        {
            string name = file.Name;
            if (name.Length is 0 or > NameLengthMax || name is "." or ".." || name.Any(c => c < ' ' || c is '/' or '\\' or (char)0x7f))
                throw new InvalidDataException($"data service: file name '{name}' is not a plain file name; expected 1 to {NameLengthMax} characters without '/', '\\' or control characters");
            if (!names.Add(name))
                throw new InvalidDataException($"data service: file name '{name}' appears twice in the manifest");
            if (file.SizeBytes is < 0 or > FileBytesMax)
                throw new InvalidDataException($"data service: file {name}: size {file.SizeBytes}; expected 0 to {FileBytesMax} bytes");
            if (file.Sha256.Length != SHA256.HashSizeInBytes)
                throw new InvalidDataException($"data service: file {name}: a {file.Sha256.Length}-byte digest; expected SHA-256 ({SHA256.HashSizeInBytes} bytes)");
        }
    }

    /// <summary>Writes the chunks that follow the manifest; checks order, sizes and digests. Returns the bytes received.</summary>
    private static async Task<long> ReceiveAsync(IAsyncStreamReader<FetchDatasetMessage> stream, DatasetManifest manifest, string directory, CancellationToken cancellationToken)
    {
        int index = 0;
        long offset = 0, total = 0;
        FileStream? output = null;
        var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        try
        {
            // Files of size 0 get no chunk: they are created as the transfer moves past them.
            while (true)
            {
                while (index < manifest.Files.Count && offset == manifest.Files[index].SizeBytes)
                {
                    output ??= File.Create(Path.Combine(directory, manifest.Files[index].Name));
                    await output.DisposeAsync();
                    output = null;
                    if (!CryptographicOperations.FixedTimeEquals(hash.GetHashAndReset(), manifest.Files[index].Sha256.Span))
                        throw new InvalidDataException($"data service: file {manifest.Files[index].Name}: SHA-256 of the bytes received differs from the manifest's; nothing was cached");
                    (index, offset) = (index + 1, 0);
                }
                if (!await stream.MoveNext(cancellationToken)) break;
                var message = stream.Current;
                if (message.BodyCase != FetchDatasetMessage.BodyOneofCase.Chunk)
                    throw new InvalidDataException($"data service: a {message.BodyCase} after the manifest; expected chunks");
                var chunk = message.Chunk;
                if (index >= manifest.Files.Count)
                    throw new InvalidDataException($"data service: chunk of file {chunk.FileIndex} after the last file's bytes");
                var file = manifest.Files[index];
                if (chunk.FileIndex != index || chunk.Offset != offset)
                    throw new InvalidDataException($"data service: chunk (file {chunk.FileIndex}, offset {chunk.Offset}); expected (file {index}, offset {offset})");
                if (chunk.Data.Length == 0 || offset + chunk.Data.Length > file.SizeBytes)
                    throw new InvalidDataException($"data service: file {file.Name}: a chunk of {chunk.Data.Length} bytes at offset {offset}; expected 1 to {file.SizeBytes - offset}");
                output ??= File.Create(Path.Combine(directory, file.Name));
                await output.WriteAsync(chunk.Data.Memory, cancellationToken);
                hash.AppendData(chunk.Data.Span);
                offset += chunk.Data.Length;
                total += chunk.Data.Length;
            }
            if (index != manifest.Files.Count)
                throw new InvalidDataException($"data service: the transfer ended in file {manifest.Files[index].Name} at byte {offset} of {manifest.Files[index].SizeBytes}; nothing was cached");
            return total;
        }
        finally
        {
            if (output is not null) await output.DisposeAsync();
            hash.Dispose();
        }
    }

    /// <summary>Whether a cached copy still has every file of the manifest with its size and digest.</summary>
    private static async Task<bool> MatchesAsync(string directory, DatasetManifest manifest, CancellationToken cancellationToken)
    {
        foreach (var file in manifest.Files)
        {
            var info = new FileInfo(Path.Combine(directory, file.Name));
            if (!info.Exists || info.Length != file.SizeBytes) return false;
            await using var stream = info.OpenRead();
            if (!CryptographicOperations.FixedTimeEquals(await SHA256.HashDataAsync(stream, cancellationToken), file.Sha256.Span)) return false;
        }
        return true;
    }

    /// <summary>First 16 hex digits of SHA-256 over the manifest's dataset, names, sizes and digests.</summary>
    public static string ManifestDigest(DatasetManifest manifest)
    {
        var text = new StringBuilder(manifest.Dataset).Append('\n');
        foreach (var file in manifest.Files)
            text.Append(file.Name).Append('\t').Append(file.SizeBytes).Append('\t').Append(Convert.ToHexString(file.Sha256.Span)).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..16];
    }

    private static string Location(string directory, DatasetManifest manifest) =>
        manifest.SingleFile ? Path.Combine(directory, manifest.Files[0].Name) : directory;

    private static partial class Log
    {
        [LoggerMessage(Level = LogLevel.Information, Message = "Dataset {Dataset} is not on this machine ({Reason}); fetching it from the coordinator")]
        public static partial void NotFoundLocally(ILogger logger, string dataset, string reason);

        [LoggerMessage(Level = LogLevel.Information, Message = "Dataset {Dataset}: using the cached copy in {Directory} (digests checked)")]
        public static partial void UsingCached(ILogger logger, string dataset, string directory);

        [LoggerMessage(Level = LogLevel.Information, Message = "Dataset {Dataset}: fetched {Files} files, {Bytes} bytes, from the coordinator into {Directory}")]
        public static partial void Fetched(ILogger logger, string dataset, int files, long bytes, string directory);
    }
}
