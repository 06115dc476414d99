namespace Virtd.Drivers.Qemu.Native;

/// <summary>What <c>/proc/&lt;pid&gt;</c> says about a process.</summary>
internal static class ProcFs
{
    /// <summary>
    /// The process state letter and start time (clock ticks since boot) from <c>/proc/&lt;pid&gt;/stat</c>,
    /// or null when there is no such process.
    /// </summary>
    public static (char State, ulong StartTime)? ReadStat(int pid)
    {
        string text;
        try { text = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
        var close = text.LastIndexOf(')');
        if (close < 0 || close + 2 >= text.Length) return null;
        var fields = text[(close + 2)..].Split(' ');
        // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
        if (fields.Length < 20 || fields[0].Length != 1 || !ulong.TryParse(fields[19], out var start)) return null;
        return (fields[0][0], start);
    }

    /// <summary>True when the process exists and has not exited (a zombie has exited: it only waits to be reaped).</summary>
    public static bool IsAlive(int pid) => ReadStat(pid) is { State: not ('Z' or 'X' or 'x') };

    /// <summary>The process's argv, or null when there is no such process.</summary>
    public static IReadOnlyList<string>? ReadCmdline(int pid)
    {
        try
        {
            var raw = File.ReadAllText($"/proc/{pid}/cmdline");
            return raw.TrimEnd('\0').Split('\0');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>Clock ticks per second in <c>/proc/&lt;pid&gt;/stat</c> (USER_HZ, 100 on Linux whatever the kernel's HZ).</summary>
    private const double UserHz = 100;

    /// <summary>
    /// CPU time (seconds) of the process's vCPU threads (QEMU's <c>debug-threads=on</c> names them <c>CPU n/TCG</c> or
    /// <c>CPU n/KVM</c>), or of the whole process when no thread is so named, and its resident memory in bytes; null when
    /// there is no such process.
    /// </summary>
    public static (double CpuSeconds, long RssBytes)? ReadUsage(int pid)
    {
        if (Virtd.Core.Observability.ProcessMemory.ResidentBytes(pid) is not { } rss) return null;
        ulong vcpuTicks = 0;
        var vcpus = 0;
        try
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                if (ReadTimes(Path.Combine(task, "stat")) is not { } t || !t.Comm.StartsWith("CPU ", StringComparison.Ordinal)) continue;
                vcpuTicks += t.Ticks;
                vcpus++;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        if (vcpus == 0)
        {
            if (ReadTimes($"/proc/{pid}/stat") is not { } whole) return null;
            vcpuTicks = whole.Ticks;
        }
        return (vcpuTicks / UserHz, rss);
    }

    /// <summary>A stat file's comm and utime + stime (fields 14 and 15).</summary>
    private static (string Comm, ulong Ticks)? ReadTimes(string statPath)
    {
        string text;
        try { text = File.ReadAllText(statPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        var open = text.IndexOf('(');
        var close = text.LastIndexOf(')');
        if (open < 0 || close < open || close + 2 >= text.Length) return null;
        var fields = text[(close + 2)..].Split(' ');
        // fields[0] is field 3 (state): utime is field 14 (fields[11]), stime field 15 (fields[12]).
        if (fields.Length < 13 || !ulong.TryParse(fields[11], out var utime) || !ulong.TryParse(fields[12], out var stime)) return null;
        return (text[(open + 1)..close], utime + stime);
    }
}
