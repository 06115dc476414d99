using System.Runtime.InteropServices;

namespace Virtd.Core.Domains;

/// <summary>
/// Resolves user paths to canonical ones (links followed, like realpath(3)) and checks
/// that they lie inside a storage pool, so no definition can reach a file outside the pools.
/// </summary>
public sealed class StoragePaths
{
    private readonly string[] _pools;

    public StoragePaths(IEnumerable<string> pools)
    {
        // Pools are canonicalised too: a pool reached through a link is the place it links to.
        _pools = pools.Select(p => TryRealPath(p) ?? Path.TrimEndingDirectorySeparator(Path.GetFullPath(p))).ToArray();
    }

    public IReadOnlyList<string> Pools => _pools;

    /// <summary>Returns null when the path is acceptable, else the reason.</summary>
    public string? Check(string? path)
    {
        if (string.IsNullOrWhiteSpace(path)) return "must not be empty";
        if (!Path.IsPathRooted(path)) return "must be an absolute path";
        if (path.Contains('\0')) return "must not contain NUL";
        var real = TryRealPath(path);
        if (real is null) return $"'{path}' does not exist or cannot be resolved";
        if (Directory.Exists(real)) return $"'{path}' is a directory, not a file";
        foreach (var pool in _pools)
        {
            if (real.StartsWith(pool + "/", StringComparison.Ordinal)) return null;
        }
        return real == path
            ? $"'{path}' is outside every storage pool ({string.Join(", ", _pools)})"
            : $"'{path}' resolves to '{real}', outside every storage pool ({string.Join(", ", _pools)})";
    }

    /// <summary>realpath(3): absolute, no '.', '..' or links; null when it does not exist.</summary>
    public static string? TryRealPath(string path)
    {
        var p = RealPath(path, IntPtr.Zero);
        if (p == IntPtr.Zero) return null;
        try { return Marshal.PtrToStringUTF8(p); }
        finally { Free(p); }
    }

    [DllImport("libc", EntryPoint = "realpath", SetLastError = true)]
    private static extern IntPtr RealPath([MarshalAs(UnmanagedType.LPUTF8Str)] string path, IntPtr resolved);

    [DllImport("libc", EntryPoint = "free")]
    private static extern void Free(IntPtr p);
}
