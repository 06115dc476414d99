using System.Globalization;
using System.Runtime.InteropServices;

namespace Virtd.Core.Observability;

/// <summary>A process's memory as Linux counts it, and what this process gives back to it (MemoryTrimmer, QEMU's RSS figure).</summary>
public static partial class ProcessMemory
{
    private const int MadvDontNeed = 4;

    /// <summary>The smallest mapping worth a system call.</summary>
    private const long SmallestMapping = 64 * 1024;

    /// <summary>
    /// Resident set size of a process (this one when <paramref name="pid"/> is null), from <c>/proc/&lt;pid&gt;/statm</c>;
    /// null when there is no such process, 0 when its figures cannot be read.
    /// </summary>
    public static long? ResidentBytes(int? pid = null)
    {
        string statm;
        try { statm = File.ReadAllText(pid is { } p ? $"/proc/{p}/statm" : "/proc/self/statm"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        return statm.Split(' ') is [_, var resident, ..] && long.TryParse(resident, NumberStyles.None, CultureInfo.InvariantCulture, out var pages)
            ? pages * Environment.SystemPageSize : 0;
    }

    /// <summary>
    /// A full compacting collection that returns free heap to the system, then <c>MADV_DONTNEED</c> over every clean
    /// read-only file mapping of at least 64 KiB. Returns how many mappings were advised and their resident bytes.
    /// </summary>
    public static (int Mappings, long Bytes) Trim()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        if (!OperatingSystem.IsLinux()) return (0, 0);
        var count = 0;
        long bytes = 0;
        foreach (var m in CleanFileMappings())
        {
            if (Madvise((nint)m.Start, (nuint)(m.End - m.Start), MadvDontNeed) != 0) continue;
            count++;
            bytes += m.Resident;
        }
        return (count, bytes);
    }

    /// <summary>One mapping of <c>/proc/self/smaps</c>.</summary>
    public readonly record struct Mapping(ulong Start, ulong End, string Permissions, string Path, long Resident, long Dirty);

    /// <summary>The mappings of this process that <see cref="IsClean"/> finds clean.</summary>
    public static List<Mapping> CleanFileMappings()
    {
        try { return [.. Parse(File.ReadAllText("/proc/self/smaps")).Where(IsClean)]; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    /// <summary>
    /// A file-backed private mapping that cannot be written and has no written (dirty) page, at least 64 KiB with something
    /// resident: dropping its pages loses nothing, the file holds every byte of them.
    /// </summary>
    public static bool IsClean(Mapping m) =>
        m.Permissions is ['r', '-', _, 'p'] && m.Path.StartsWith('/') && !m.Path.EndsWith(" (deleted)", StringComparison.Ordinal) &&
        m.Dirty == 0 && m.Resident > 0 && (long)(m.End - m.Start) >= SmallestMapping;

    /// <summary>
    /// The mappings of an smaps text: a header line (<c>start-end perms offset dev inode [path]</c>) then <c>Key: N kB</c>
    /// lines; Rss is the resident size, Dirty the sum of <c>Shared_Dirty</c> and <c>Private_Dirty</c>.
    /// </summary>
    public static IEnumerable<Mapping> Parse(string smaps)
    {
        Mapping? current = null;
        foreach (var line in smaps.Split('\n'))
        {
            if (line.Length == 0) continue;
            var colon = line.IndexOf(':');
            var dash = line.IndexOf('-');
            if (dash > 0 && (colon < 0 || dash < colon) && IsHex(line.AsSpan(0, dash)))
            {
                if (current is { } done) yield return done;
                current = Header(line, dash);
                continue;
            }
            if (current is not { } m || colon < 0) continue;
            var key = line.AsSpan(0, colon);
            if (key is not ("Rss" or "Private_Dirty" or "Shared_Dirty")) continue;
            var value = line.AsSpan(colon + 1).Trim();
            if (value.EndsWith(" kB")) value = value[..^3];
            if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var kb)) continue;
            current = key is "Rss" ? m with { Resident = kb * 1024 } : m with { Dirty = m.Dirty + kb * 1024 };
        }
        if (current is { } last) yield return last;
    }

    private static Mapping? Header(string line, int dash)
    {
        // 7f4a40200000-7f4a402c5000 r--p 00000000 fe:00 332131                     /usr/lib/x86_64-linux-gnu/libcrypto.so.3
        var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length < 5) return null;
        if (!ulong.TryParse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var start)) return null;
        if (!ulong.TryParse(fields[0].AsSpan(dash + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var end)) return null;
        return new Mapping(start, end, fields[1], fields.Length > 5 ? fields[5].Trim() : "", 0, 0);
    }

    private static bool IsHex(ReadOnlySpan<char> s)
    {
        foreach (var c in s) if (!char.IsAsciiHexDigit(c)) return false;
        return s.Length > 0;
    }

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Madvise(nint address, nuint length, int advice);
}
