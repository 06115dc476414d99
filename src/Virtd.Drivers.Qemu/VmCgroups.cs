using System.Globalization;
using Microsoft.Extensions.Logging;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// One cgroup v2 per VM, with <c>memory.max</c> (guest memory plus <c>Qemu:MemoryOverheadMiB</c>) and <c>pids.max</c>,
/// under the daemon's own cgroup: the daemon moves itself into a leaf <c>daemon</c> (cgroup v2 lets only leaves hold
/// processes once controllers are enabled below), enables memory and pids for <c>vms</c>, and puts each QEMU into
/// <c>vms/&lt;uuid&gt;</c> right after it is spawned (QEMU waits paused until the monitor says <c>cont</c>, so
/// nothing of the guest runs outside it). Under systemd the unit needs <c>Delegate=yes</c>. Without a writable
/// cgroup v2 hierarchy that offers both controllers, VMs run without per-VM limits, and <see cref="Status"/> says why.
/// </summary>
internal sealed class VmCgroups
{
    private readonly string? _vms;

    private VmCgroups(string? vms, string status)
    {
        _vms = vms;
        Status = status;
    }

    /// <summary>Where VM cgroups live, or why there are none.</summary>
    public string Status { get; }

    public bool Available => _vms is not null;

    /// <summary>Sets up <c>daemon</c> and <c>vms</c> below the daemon's cgroup, if the hierarchy allows.</summary>
    /// <param name="mountInfo">/proc/self/mountinfo (tests give their own).</param>
    /// <param name="selfCgroup">/proc/self/cgroup.</param>
    /// <param name="pid">The process to move into the <c>daemon</c> leaf: the daemon itself (0 in tests).</param>
    public static VmCgroups Setup(string mountInfo, string selfCgroup, int pid, ILogger log)
    {
        string? mount = null;
        foreach (var line in SafeLines(mountInfo))
        {
            // id parent major:minor root mount-point options ... - fstype source super-options
            var parts = line.Split(' ');
            var dash = Array.IndexOf(parts, "-");
            if (dash > 4 && dash + 1 < parts.Length && parts[dash + 1] == "cgroup2") { mount = Unescape(parts[4]); break; }
        }
        if (mount is null) return None("no cgroup v2 hierarchy is mounted");
        var own = SafeLines(selfCgroup).FirstOrDefault(l => l.StartsWith("0::", StringComparison.Ordinal))?[3..];
        if (own is null) return None($"this process is in no cgroup v2 group ({selfCgroup})");
        var baseDir = Path.Combine(mount, own.TrimStart('/'));
        var controllers = Read(Path.Combine(baseDir, "cgroup.controllers"))?.Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? [];
        var missing = new[] { "memory", "pids" }.Where(c => !controllers.Contains(c)).ToList();
        if (missing.Count > 0)
            return None($"the cgroup v2 group {baseDir} offers no {string.Join(" or ", missing)} controller (a hybrid or undelegated hierarchy; under systemd set Delegate=yes)");
        try
        {
            var name = Path.GetFileName(baseDir.TrimEnd('/'));
            // Already a leaf of ours (a restarted daemon, or a unit that put us there): use the parent.
            if (name == "daemon") baseDir = Path.GetDirectoryName(baseDir.TrimEnd('/'))!;
            var daemon = Path.Combine(baseDir, "daemon");
            Directory.CreateDirectory(daemon);
            if (pid > 0) File.WriteAllText(Path.Combine(daemon, "cgroup.procs"), pid.ToString(CultureInfo.InvariantCulture));
            File.WriteAllText(Path.Combine(baseDir, "cgroup.subtree_control"), "+memory +pids");
            var vms = Path.Combine(baseDir, "vms");
            Directory.CreateDirectory(vms);
            File.WriteAllText(Path.Combine(vms, "cgroup.subtree_control"), "+memory +pids");
            log.LogInformation("per-VM cgroups under {Path} (memory.max, pids.max)", vms);
            return new VmCgroups(vms, vms);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return None($"the cgroup v2 group {baseDir} cannot be set up: {e.Message}");
        }

        VmCgroups None(string why)
        {
            log.LogWarning("VMs run without per-VM cgroups (memory.max, pids.max): {Why}", why);
            return new VmCgroups(null, "unavailable: " + why);
        }
    }

    /// <summary>Puts <paramref name="pid"/> into the VM's own cgroup with its limits; false (logged) when that fails.</summary>
    public bool Place(Guid uuid, int pid, long memoryMaxBytes, int pidsMax, ILogger log)
    {
        if (_vms is null) return false;
        var dir = PathOf(uuid);
        try
        {
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "memory.max"), memoryMaxBytes.ToString(CultureInfo.InvariantCulture));
            File.WriteAllText(Path.Combine(dir, "pids.max"), pidsMax.ToString(CultureInfo.InvariantCulture));
            File.WriteAllText(Path.Combine(dir, "cgroup.procs"), pid.ToString(CultureInfo.InvariantCulture));
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogWarning("QEMU pid {Pid}: cannot place it in cgroup {Path}: {Error}", pid, dir, e.Message);
            return false;
        }
    }

    /// <summary>Removes the VM's cgroup once its QEMU is gone (rmdir of an empty cgroup).</summary>
    public void Remove(Guid uuid, ILogger log)
    {
        if (_vms is null) return;
        var dir = PathOf(uuid);
        try { if (Directory.Exists(dir)) Directory.Delete(dir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { log.LogDebug("cgroup {Path} not removed: {Error}", dir, e.Message); }
    }

    public string PathOf(Guid uuid) => Path.Combine(_vms ?? "", uuid.ToString("D"));

    private static string? Read(string path)
    {
        try { return File.ReadAllText(path).Trim(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    private static IEnumerable<string> SafeLines(string path) => Read(path)?.Split('\n') ?? [];

    /// <summary>mountinfo escapes space, tab, newline and backslash as octal.</summary>
    private static string Unescape(string s) => s.Replace("\\040", " ").Replace("\\011", "\t").Replace("\\012", "\n").Replace("\\134", "\\");
}
