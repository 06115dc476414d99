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
    /// <summary>The name of the pool that is always there unless configured otherwise: &lt;StateDirectory&gt;/images.</summary>
    public const string DefaultPool = "default";

    /// <summary>
    /// Named directories (<c>Storage:Pools:&lt;name&gt;=&lt;path&gt;</c>) every disk, kernel and initrd must lie in; their
    /// files are the pool's volumes. <c>default</c> is &lt;StateDirectory&gt;/images unless given.
    /// </summary>
    public Dictionary<string, string> Pools { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The largest image <c>PUT .../content</c> takes, in bytes (default 64 GiB).</summary>
    public long MaxUploadBytes { get; set; } = 64L << 30;
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
    /// <summary>Keep the job journal (<c>&lt;StateDirectory&gt;/jobs/journal</c>): jobs survive a restart, and a 202 is sent only once its job is on disk.</summary>
    public bool Journal { get; set; } = true;
    /// <summary>How long an Idempotency-Key stands for its first request.</summary>
    public TimeSpan IdempotencyWindow { get; set; } = TimeSpan.FromHours(24);
    /// <summary>At most this many Idempotency-Keys are kept (oldest first out).</summary>
    public int IdempotencyKeys { get; set; } = 100_000;
}

/// <summary>What happens to running VMs when the daemon stops (libvirt-guests' ON_SHUTDOWN and friends).</summary>
public enum GuestStopPolicy { Keep, Shutdown }

/// <summary>Configuration section <c>Guests</c>.</summary>
public sealed class GuestsOptions
{
    /// <summary><c>keep</c>: VMs keep running and the next daemon takes them back; <c>shutdown</c>: ACPI shutdown, then destroy.</summary>
    public GuestStopPolicy OnDaemonStop { get; set; } = GuestStopPolicy.Keep;

    /// <summary>VMs shut down at the same time.</summary>
    public int ParallelShutdown { get; set; } = 4;

    /// <summary>How long one VM may take to power off by ACPI before it is destroyed.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Bound on shutting all VMs down; what is still running then is destroyed. Added to the daemon's shutdown bound.</summary>
    public TimeSpan OverallTimeout { get; set; } = TimeSpan.FromSeconds(300);
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
