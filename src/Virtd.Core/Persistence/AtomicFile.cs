using System.Runtime.InteropServices;

namespace Virtd.Core.Persistence;

/// <summary>Crash-safe file replacement: temp file, fsync, rename over, fsync the directory.</summary>
public static class AtomicFile
{
    /// <summary>Read and write for the owner only (0600): secrets, definitions, runtime status.</summary>
    public const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <param name="durable">
    /// Also survive power loss (fsync of the file and its directory). Runtime files of running VMs skip it: they
    /// only need to survive the daemon's own crash, which the page cache does, and the VMs do not outlive the host.
    /// </param>
    /// <param name="mode">The new file's permissions (for secrets: owner read and write only); the umask's default when null.</param>
    /// <exception cref="DirectorySyncException">The file was replaced but the directory's fsync failed: the change is
    /// visible and may not survive a power loss. Callers report it; they do not undo.</exception>
    public static void Write(string path, ReadOnlySpan<byte> content, bool durable = true, UnixFileMode? mode = null)
    {
        var dir = Path.GetDirectoryName(path)!;
        var tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None };
        if (mode is { } m) options.UnixCreateMode = m;
        try
        {
            using (var fs = new FileStream(tmp, options))
            {
                fs.Write(content);
                fs.Flush(flushToDisk: durable);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
        if (durable) SyncDirectory(dir);
    }

    public static void Delete(string path)
    {
        if (!File.Exists(path)) return;
        File.Delete(path);
        SyncDirectory(Path.GetDirectoryName(path)!);
    }

    /// <summary>fsync of a directory, so that a rename or unlink in it survives a power loss; throws <see cref="DirectorySyncException"/>.</summary>
    public static void SyncDirectory(string dir)
    {
        var fd = Open(dir, ORdOnly | ODirectory);
        if (fd < 0) throw new DirectorySyncException(dir, Marshal.GetLastPInvokeError());
        try
        {
            if (FSync(fd) != 0) throw new DirectorySyncException(dir, Marshal.GetLastPInvokeError());
        }
        finally { _ = Close(fd); }
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private const int ORdOnly = 0;
    private const int ODirectory = 0x10000; // Linux x86-64 and arm64

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static extern int FSync(int fd);

    [DllImport("libc", EntryPoint = "close")]
    private static extern int Close(int fd);
}

/// <summary>A directory's fsync failed (errno in <see cref="Exception.HResult"/>): what was renamed or removed in it is done, but may not be durable.</summary>
public sealed class DirectorySyncException(string directory, int errno)
    : IOException($"fsync of directory {directory} failed (errno {errno}): the change was made but may not survive a power loss", errno)
{
    public string Directory { get; } = directory;
}
