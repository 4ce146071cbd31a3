using System.Buffers;
using System.IO.MemoryMappedFiles;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Cluster.Protos;

namespace Cluster.Shared.Wire;

/// <summary>
/// A region of shared memory that one data-port connection's two ends both map when they run on
/// the same host (parameter_server.proto, "The data port", shared region): a chunk's data bytes
/// are copied into it and its frame carries only where they lie (<see cref="RegionSlice"/>),
/// instead of the bytes going through the kernel's socket buffers twice. The parameter server
/// creates the file (in <c>/dev/shm</c>), fully allocated so that a full tmpfs fails here and not
/// later as a SIGBUS, and removes its name as soon as the worker has answered: the memory lives
/// as long as both mappings, and nothing is left behind by a process killed with -9 after that.
/// </summary>
public sealed partial class SharedRegion : MemoryManager<byte>
{
    /// <summary>Where regions are created on Linux; other systems have no region (the data goes through the socket).</summary>
    public const string DefaultDirectory = "/dev/shm";

    /// <summary>Largest region: chunk positions are int32 offsets.</summary>
    public const int BytesMax = int.MaxValue;

    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly unsafe byte* _start;
    private int _disposed;

    private unsafe SharedRegion(FileStream stream, int bytes)
    {
        _file = MemoryMappedFile.CreateFromFile(stream, mapName: null, bytes, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        try
        {
            _view = _file.CreateViewAccessor(0, bytes, MemoryMappedFileAccess.ReadWrite);
            byte* start = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
            _start = start + _view.PointerOffset;
        }
        catch
        {
            _view?.Dispose();
            _file.Dispose();
            throw;
        }
        Length = bytes;
    }

    /// <summary>The region's size in bytes.</summary>
    public int Length { get; }

    /// <summary>The directory regions are made in on this machine; null where there is none (not Linux, or no /dev/shm).</summary>
    public static string? DirectoryOnThisHost => OperatingSystem.IsLinux() && Directory.Exists(DefaultDirectory) ? DefaultDirectory : null;

    /// <summary>
    /// Creates a region of <paramref name="bytes"/> in <paramref name="directory"/> under a new
    /// random name, readable and writable by this user only, every page allocated.
    /// Throws IOException when the file system cannot hold it.
    /// </summary>
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public static (SharedRegion Region, string Name) Create(string directory, int bytes)
    {
        if (bytes <= 0) throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "region bytes: expected 1 or more");
        string name = $"cluster-ps-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16))}";
        string path = Path.Combine(directory, name);
        var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.ReadWrite, PreallocationSize = bytes,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        try
        {
            if (stream.Length != bytes) stream.SetLength(bytes);
            return (new SharedRegion(stream, bytes), name);
        }
        catch
        {
            stream.Dispose();
            File.Delete(path);
            throw;
        }
    }

    /// <summary>
    /// Maps the region <paramref name="name"/> that the peer created in <paramref name="directory"/>,
    /// which must be a regular file of exactly <paramref name="bytes"/>. Throws InvalidDataException
    /// for a name that is not a region's, FileNotFoundException when the peer is on another host.
    /// </summary>
    public static SharedRegion Open(string directory, string name, int bytes)
    {
        if (!NamePattern().IsMatch(name))
            throw new InvalidDataException($"shared region: name '{name}' is not a region's; expected cluster-ps-<pid>-<32 hex digits>");
        if (bytes <= 0) throw new InvalidDataException($"shared region: bytes {bytes}; expected 1 or more");
        string path = Path.Combine(directory, name);
        if (new FileInfo(path) is { LinkTarget: not null })
            throw new InvalidDataException($"shared region: {path} is a link; expected the region itself");
        var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        try
        {
            if (stream.Length != bytes)
                throw new InvalidDataException($"shared region: {path} holds {stream.Length} bytes; expected {bytes}");
            return new SharedRegion(stream, bytes);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Whether <paramref name="host"/> (a data port's) is this machine: a loopback address or one
    /// of its interfaces' (a server in another container or on another machine is not).
    /// </summary>
    public static async Task<bool> IsThisHostAsync(string host, CancellationToken cancellationToken)
    {
        IPAddress[] addresses;
        if (IPAddress.TryParse(host.Trim('[', ']'), out var address)) addresses = [address];
        else
        {
            try { addresses = await Dns.GetHostAddressesAsync(host, cancellationToken); }
            catch (SocketException) { return false; }
        }
        if (addresses.Any(IPAddress.IsLoopback)) return true;
        var local = NetworkInterface.GetAllNetworkInterfaces()
            .SelectMany(network => network.GetIPProperties().UnicastAddresses)
            .Select(unicast => unicast.Address)
            .ToHashSet();
        return addresses.Any(local.Contains);
    }

    /// <summary>Removes a region's name (the mappings stay valid); a missing name is not an error.</summary>
    public static void Unlink(string directory, string name)
    {
        try { File.Delete(Path.Combine(directory, name)); }
        catch (IOException) { }
    }

    /// <summary>
    /// Removes the regions in <paramref name="directory"/> left by parameter servers that are no
    /// longer running (one killed between making a region and the worker's answer); returns how
    /// many. A region whose process id is in use is kept, and so is one this user may not remove.
    /// </summary>
    public static int RemoveStale(string directory)
    {
        int removed = 0;
        foreach (string path in Directory.EnumerateFiles(directory, "cluster-ps-*"))
        {
            string name = Path.GetFileName(path);
            if (!NamePattern().IsMatch(name) || !int.TryParse(name.Split('-')[2], out int pid) || IsRunning(pid)) continue;
            try
            {
                File.Delete(path);
                removed++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return removed;
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    [GeneratedRegex("^cluster-ps-[0-9]+-[0-9a-f]{32}$")]
    private static partial Regex NamePattern();

    /// <summary>Where the data of <paramref name="slice"/> lies; InvalidDataException when it is not inside the region.</summary>
    public Memory<byte> Slice(RegionSlice slice)
    {
        if (slice.Offset < 0 || slice.Bytes < 0 || slice.Offset > Length - (long)slice.Bytes)
            throw new InvalidDataException(
                $"data port frame: region slice at offset {slice.Offset} of {slice.Bytes} bytes; expected inside the connection's {Length}-byte shared region");
        return Memory.Slice((int)slice.Offset, slice.Bytes);
    }

    /// <summary>A writer placing one exchange's chunk data from the start of the region.</summary>
    public Writer StartExchange() => new(this);

    public override unsafe Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return new Span<byte>(_start, Length);
    }

    /// <summary>Unmaps the region: nothing may read or write it after.</summary>
    public void Release() => ((IDisposable)this).Dispose();

    public override unsafe MemoryHandle Pin(int elementIndex = 0) => new(_start + elementIndex, default, this);

    public override void Unpin() { }

    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }

    /// <summary>Places an exchange's chunk data one after the other; what no longer fits goes through the socket.</summary>
    public sealed class Writer(SharedRegion region)
    {
        private int _used;

        /// <summary>Copies <paramref name="data"/> into the region and returns where it lies; null when it does not fit.</summary>
        public RegionSlice? TryPlace(ReadOnlySpan<byte> data)
        {
            if (data.Length > region.Length - _used) return null;
            data.CopyTo(region.GetSpan().Slice(_used));
            var slice = new RegionSlice { Offset = _used, Bytes = data.Length };
            _used += data.Length;
            return slice;
        }
    }
}
