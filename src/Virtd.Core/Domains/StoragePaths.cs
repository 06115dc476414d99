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
        var given = pools.ToList();
        _pools = given.Select(p => TryRealPath(p) ?? Path.TrimEndingDirectorySeparator(Path.GetFullPath(p))).ToArray();
        // A path may name a pool as configured (through a link) or as it resolves.
        _spellings = [.. _pools, .. given.Select(p => Path.TrimEndingDirectorySeparator(Path.GetFullPath(p)))];
    }

    private readonly string[] _spellings;

    public IReadOnlyList<string> Pools => _pools;

    /// <summary>
    /// Returns null when the path is acceptable, else the reason. A path outside the pools gets one message whether or
    /// not it exists, and a link out of a pool the same one: the API is not a way to learn what exists on the host.
    /// </summary>
    public string? Check(string? path)
    {
        if (string.IsNullOrWhiteSpace(path)) return "must not be empty";
        if (!Path.IsPathRooted(path)) return "must be an absolute path";
        if (path.Contains('\0')) return "must not contain NUL";
        var lexical = Path.GetFullPath(path);
        if (!_spellings.Any(pool => lexical.StartsWith(pool + "/", StringComparison.Ordinal))) return Outside(path);
        var real = TryRealPath(path);
        if (real is null) return $"'{path}' does not exist";
        if (!InsidePool(real)) return Outside(path);
        if (Directory.Exists(real)) return $"'{path}' is a directory, not a file";
        return null;
    }

    /// <summary>The path resolved (links followed) when it is a file inside a pool, else null.</summary>
    public string? Resolve(string? path)
    {
        if (string.IsNullOrWhiteSpace(path) || !Path.IsPathRooted(path) || path.Contains('\0')) return null;
        var real = TryRealPath(path);
        return real is not null && InsidePool(real) && !Directory.Exists(real) ? real : null;
    }

    private bool InsidePool(string real) => _pools.Any(pool => real.StartsWith(pool + "/", StringComparison.Ordinal));

    private string Outside(string path) => $"'{path}' is not a file inside a storage pool ({string.Join(", ", _pools)})";

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
