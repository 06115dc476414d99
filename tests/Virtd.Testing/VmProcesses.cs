using System.Diagnostics;
using Virtd.Drivers.Qemu;

namespace Virtd.Testing;

/// <summary>
/// The QEMU processes a daemon started, found by the run directory their environment carries (QEMU's argv names no
/// path). They outlive the daemon by design, so tests and benchmarks end them themselves.
/// </summary>
public static class VmProcesses
{
    /// <summary>Pids of the QEMU processes the daemon of <paramref name="runDirectory"/> started that exist now.</summary>
    public static List<int> Find(string runDirectory)
    {
        var pids = new List<int>();
        var marker = $"{QemuCommandLine.RunDirectoryVariable}={runDirectory}";
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                if (!File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0')[0].Contains("qemu-system", StringComparison.Ordinal)) continue;
                if (File.ReadAllText(Path.Combine(dir, "environ")).Split('\0').Contains(marker)) pids.Add(pid);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // gone meanwhile
        }
        return pids;
    }

    /// <summary>SIGKILL to each of them (a stopped one too).</summary>
    public static void KillAll(string runDirectory)
    {
        foreach (var pid in Find(runDirectory))
        {
            try
            {
                using var process = Process.GetProcessById(pid);
                process.Kill();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException) { } // gone meanwhile
        }
    }
}
