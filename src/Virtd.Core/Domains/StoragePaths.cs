using System.Runtime.InteropServices;
using Virtd.Core.Storage;

namespace Virtd.Core.Domains;

/// <summary>A configured pool: its name, its directory as configured, and that directory resolved (links followed).</summary>
public sealed record StoragePool(string Name, string Path, string RealPath);

/// <summary>
/// Resolves user paths to canonical ones (links followed, like realpath(3)) and checks
/// that they lie inside a storage pool, so no definition can reach a file outside the pools.
/// </summary>
public sealed class StoragePaths
{
    private readonly string[] _pools;
    private readonly Dictionary<string, StoragePool> _named;

    /// <summary>Unnamed pools (tests): named by their position, "0", "1", ...</summary>
    public StoragePaths(IEnumerable<string> pools) : this(pools.Select((p, i) => KeyValuePair.Create(i.ToString(System.Globalization.CultureInfo.InvariantCulture), p))) { }

    public StoragePaths(IEnumerable<KeyValuePair<string, string>> pools)
    {
        var given = pools.ToList();
        // Pools are canonicalised too: a pool reached through a link is the place it links to.
        _named = given.ToDictionary(kv => kv.Key, kv =>
        {
            var configured = Path.TrimEndingDirectorySeparator(Path.GetFullPath(kv.Value));
            return new StoragePool(kv.Key, configured, TryRealPath(kv.Value) ?? configured);
        }, StringComparer.Ordinal);
        _pools = _named.Values.Select(p => p.RealPath).Distinct().ToArray();
        // A path may name a pool as configured (through a link) or as it resolves.
        _spellings = [.. _pools, .. _named.Values.Select(p => p.Path)];
    }

    private readonly string[] _spellings;

    /// <summary>The pools' directories, resolved.</summary>
    public IReadOnlyList<string> Pools => _pools;

    /// <summary>The named pools, by name.</summary>
    public IReadOnlyCollection<StoragePool> Named => _named.Values;

    public StoragePool? Pool(string name) => _named.GetValueOrDefault(name);

    /// <summary>Where a volume's file is (the pool's directory as configured, then the name), or null for an unknown pool.</summary>
    public string? VolumePath(VolumeRef volume) => Pool(volume.Pool) is { } pool ? Path.Combine(pool.Path, volume.Name) : null;

    /// <summary>The file a disk names: its <c>path</c>, or its <c>volume</c>'s file.</summary>
    public string DiskPath(DiskConfig disk) =>
        disk.Volume is { } v ? (VolumeRef.TryParse(v, out var r, out _) ? VolumePath(r) ?? "" : "") : disk.Path;

    /// <summary>Null when the volume a disk names exists, else the reason.</summary>
    public string? CheckVolume(string? volume)
    {
        if (!VolumeRef.TryParse(volume, out var r, out var problem)) return problem;
        if (Pool(r.Pool) is null) return $"names the pool '{r.Pool}', which is not configured (pools: {string.Join(", ", _named.Keys.Order(StringComparer.Ordinal))})";
        var path = VolumePath(r)!;
        var real = TryRealPath(path);
        if (real is null || !InsidePool(real) || Directory.Exists(real)) return $"no volume '{r.Name}' in pool '{r.Pool}'";
        return null;
    }

    /// <summary>The volume a file is, when it is a file directly in a pool's directory (the first pool by name that holds it).</summary>
    public VolumeRef? VolumeOf(string realPath)
    {
        var dir = Path.GetDirectoryName(realPath);
        var pool = _named.Values.Where(p => p.RealPath == dir).OrderBy(p => p.Name, StringComparer.Ordinal).FirstOrDefault();
        return pool is null ? null : new VolumeRef(pool.Name, Path.GetFileName(realPath));
    }

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
