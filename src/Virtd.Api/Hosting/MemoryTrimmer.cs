using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Virtd.Api.Hosting;

/// <summary>Configuration section <c>Memory</c>: when the daemon gives back memory it no longer uses.</summary>
public sealed class MemoryOptions
{
    /// <summary>
    /// A second after the daemon is ready: collect what start-up allocated and give back the pages only start-up touched
    /// (see <see cref="MemoryTrimmer"/>).
    /// </summary>
    public bool TrimAfterStart { get; set; } = true;

    /// <summary>
    /// After activity, once no request has started or ended for this long: the same trim, once per quiet spell. An open
    /// event stream does not count as activity. <c>00:00:00</c> never trims when idle.
    /// </summary>
    public TimeSpan TrimWhenIdle { get; set; } = TimeSpan.FromSeconds(30);

    public List<string> Validate()
    {
        var errors = new List<string>();
        if (TrimWhenIdle < TimeSpan.Zero || TimeSpan.FromDays(1) < TrimWhenIdle)
            errors.Add("Memory:TrimWhenIdle: must be between 00:00:00 (never) and 1.00:00:00");
        return errors;
    }
}

/// <summary>
/// Gives memory back to the host the daemon shares with its VMs, the way the kernel frees its init sections after
/// boot: start-up allocates tens of megabytes it then drops, and runs code (configuration binding, dependency
/// injection, the OpenAPI and metrics set-up) that no request runs again. A trim is one full, compacting garbage
/// collection that returns free heap to the system (<see cref="GCCollectionMode.Aggressive"/>), then
/// <c>madvise(MADV_DONTNEED)</c> over the clean read-only file mappings (the binary's code and read-only data, shared
/// libraries): their pages stay in the page cache, and a page touched again comes back by a minor fault. Mappings
/// with a written page are left alone, so nothing but residency changes. Runs after start
/// (<see cref="MemoryOptions.TrimAfterStart"/>) and after a quiet spell (<see cref="MemoryOptions.TrimWhenIdle"/>);
/// a hosted service, awaited at stop.
/// </summary>
public sealed class MemoryTrimmer(MemoryOptions options, IdleMonitor idle, DaemonStatus status, TimeProvider time, ILogger<MemoryTrimmer> log)
    : BackgroundService
{
    /// <summary>How long after readiness the start-up trim runs: the first requests of a starting client go first.</summary>
    public static readonly TimeSpan AfterStart = TimeSpan.FromSeconds(1);

    /// <summary>Trims done so far (for tests and the log).</summary>
    public int Trims => Volatile.Read(ref _trims);

    private int _trims;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!options.TrimAfterStart && options.TrimWhenIdle <= TimeSpan.Zero) return;
        var check = TimeSpan.FromTicks(Math.Clamp(options.TrimWhenIdle.Ticks / 4, TimeSpan.TicksPerSecond, TimeSpan.TicksPerSecond * 5));
        try
        {
            var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void Changed(DaemonState state) { if (state == DaemonState.Ready) ready.TrySetResult(); else ready.TrySetCanceled(CancellationToken.None); }
            status.Changed += Changed;
            try
            {
                if (status.State != DaemonState.Starting) Changed(status.State);
                await ready.Task.WaitAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (TaskCanceledException) when (!stoppingToken.IsCancellationRequested) { return; } // stopping before ready
            finally { status.Changed -= Changed; }
            await Task.Delay(AfterStart, time, stoppingToken).ConfigureAwait(false);
            // Activity before this point is start-up's: only what comes after it makes a quiet spell worth a trim.
            var trimmedAt = idle.LastActivity;
            if (options.TrimAfterStart) Trim("start");
            if (options.TrimWhenIdle <= TimeSpan.Zero) return;
            while (!stoppingToken.IsCancellationRequested && status.State == DaemonState.Ready)
            {
                await Task.Delay(check, time, stoppingToken).ConfigureAwait(false);
                var last = idle.LastActivity;
                if (last == trimmedAt || idle.IdleFor < options.TrimWhenIdle) continue;
                trimmedAt = last;
                Trim("idle");
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The daemon is stopping.
        }
    }

    private void Trim(string why)
    {
        var before = ProcessMemory.ResidentBytes();
        var sw = Stopwatch.StartNew();
        var (mappings, advised) = ProcessMemory.Trim();
        Interlocked.Increment(ref _trims);
        log.LogInformation("memory trim ({Why}): RSS {Before:0.0} → {After:0.0} MiB in {Ms:0.0} ms ({Mappings} clean file mappings, {Advised:0.0} MiB, advised)",
            why, before / 1048576.0, ProcessMemory.ResidentBytes() / 1048576.0, sw.Elapsed.TotalMilliseconds, mappings, advised / 1048576.0);
    }
}

/// <summary>The process's own memory, read from and given back to Linux.</summary>
public static partial class ProcessMemory
{
    private const int MadvDontNeed = 4;

    /// <summary>The smallest mapping worth a system call.</summary>
    private const long SmallestMapping = 64 * 1024;

    /// <summary>Resident set size, from <c>/proc/self/statm</c>; 0 where there is none.</summary>
    public static long ResidentBytes()
    {
        try
        {
            var fields = File.ReadAllText("/proc/self/statm").Split(' ');
            return long.Parse(fields[1], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return 0;
        }
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
