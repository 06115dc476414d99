using Virtd.Core.Domains;

namespace Virtd.Core.Configuration;

/// <summary>Top-level daemon settings (configuration root).</summary>
public sealed class VirtdOptions
{
    /// <summary>Persistent state: definitions, logs, default storage pool.</summary>
    public string StateDirectory { get; set; } = DefaultPaths.StateDirectory();

    /// <summary>Runtime state: monitor sockets, status files. Kept short (Unix socket paths ≤ 108 bytes).</summary>
    public string RunDirectory { get; set; } = DefaultPaths.RunDirectory();

    /// <summary><c>qemu</c> or <c>simulated</c>; when unset, <c>qemu</c> if a usable QEMU driver exists, else <c>simulated</c>.</summary>
    public DriverKind? DefaultDriver { get; set; }

    /// <summary>Bound on the whole of shutdown phase 2.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Exit cleanly once no VM runs, no job is queued or running and no request has been in flight for this
    /// long (libvirtd <c>--timeout</c>). Zero, the default, never exits on idle.
    /// </summary>
    public TimeSpan IdleTimeout { get; set; }

    public string DomainsDirectory => Path.Combine(StateDirectory, "domains");
}

public sealed class StorageOptions
{
    /// <summary>Directories every disk, kernel and initrd must lie in. Default: &lt;StateDirectory&gt;/images.</summary>
    public List<string> Pools { get; set; } = [];
}

public sealed class JobsOptions
{
    public int Workers { get; set; } = 8;
    public int PriorityWorkers { get; set; } = 2;
    /// <summary>Jobs waiting in all queues together; beyond it 429.</summary>
    public int QueueLimit { get; set; } = 1024;
    /// <summary>Jobs waiting behind one domain's gate; beyond it 429.</summary>
    public int PerDomainQueueLimit { get; set; } = 16;
    /// <summary>How long a job may wait for its domain's gate before failing <c>domain-busy</c>.</summary>
    public TimeSpan WaitTimeout { get; set; } = TimeSpan.FromSeconds(30);
    /// <summary>How long finished jobs stay listed.</summary>
    public TimeSpan Retention { get; set; } = TimeSpan.FromMinutes(15);
    /// <summary>At most this many finished jobs are kept.</summary>
    public int RetentionCount { get; set; } = 10_000;
}

/// <summary>Settings of the simulated driver.</summary>
public sealed class SimulatedOptions
{
    /// <summary>Timeout of one simulated monitor command (mirrors <c>Qemu:MonitorTimeout</c>).</summary>
    public TimeSpan MonitorTimeout { get; set; } = TimeSpan.FromSeconds(10);
}

public static class DefaultPaths
{
    private static bool IsRoot => Environment.UserName == "root";

    public static string StateDirectory()
    {
        if (IsRoot) return "/var/lib/virtd";
        var xdg = Environment.GetEnvironmentVariable("XDG_STATE_HOME");
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(string.IsNullOrEmpty(xdg) ? Path.Combine(home, ".local", "state") : xdg, "virtd");
    }

    public static string RunDirectory()
    {
        if (IsRoot) return "/run/virtd";
        var xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        return string.IsNullOrEmpty(xdg) ? Path.Combine(Path.GetTempPath(), $"virtd-{Environment.UserName}") : Path.Combine(xdg, "virtd");
    }
}
