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
}
