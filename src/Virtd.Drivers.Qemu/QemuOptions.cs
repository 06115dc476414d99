namespace Virtd.Drivers.Qemu;

/// <summary>Which accelerator guests run with.</summary>
public enum QemuAccel { Auto, Kvm, Tcg }

/// <summary>Settings of the QEMU driver (configuration section <c>Qemu</c>).</summary>
public sealed class QemuOptions
{
    /// <summary>The QEMU binary; when unset, <c>qemu-system-x86_64</c> from PATH.</summary>
    public string? Binary { get; set; }

    /// <summary><c>auto</c> (KVM when /dev/kvm opens and the CPU has vmx/svm, else TCG), <c>kvm</c> or <c>tcg</c>.</summary>
    public QemuAccel Accel { get; set; } = QemuAccel.Auto;

    /// <summary>Bound on every monitor command; past it the job fails <c>monitor-timeout</c>.</summary>
    public TimeSpan MonitorTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a VM found at start may stay <c>reconnecting</c> before it is marked unresponsive.</summary>
    public TimeSpan ReconnectTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Bound on a start: spawn to running (the monitor socket must appear within it).</summary>
    public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Run guests under QEMU's seccomp sandbox; a start fails when this QEMU cannot sandbox.</summary>
    public bool Sandbox { get; set; } = true;

    public const string DefaultUser = "virtd-qemu";

    /// <summary>The user QEMU runs as when the daemon runs as root; <c>root</c> only when set explicitly.</summary>
    public string User { get; set; } = DefaultUser;

    /// <summary>What a VM's cgroup allows above its guest memory (<c>memory.max</c>): QEMU itself, TCG's code buffer, I/O buffers.</summary>
    public int MemoryOverheadMiB { get; set; } = 512;

    /// <summary>qemu-img, which reads disk images' chains; when unset, the one beside the QEMU binary or on PATH.</summary>
    public string? ImgBinary { get; set; }

    /// <summary>Bound on reading one disk's image chain with qemu-img.</summary>
    public TimeSpan ImageTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Threads and processes of one VM's QEMU at most (<c>pids.max</c>).</summary>
    public int PidsMax { get; set; } = 512;

    /// <summary>Checks every value; messages name the configuration key.</summary>
    public List<string> Validate()
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(Binary is null || Path.IsPathRooted(Binary), "Qemu:Binary", "must be an absolute path");
        Check(Enum.IsDefined(Accel), "Qemu:Accel", "must be auto, kvm or tcg");
        Check(MonitorTimeout > TimeSpan.Zero && MonitorTimeout <= TimeSpan.FromHours(1), "Qemu:MonitorTimeout", "must be between 00:00:00.001 and 01:00:00");
        Check(ReconnectTimeout > TimeSpan.Zero && ReconnectTimeout <= TimeSpan.FromHours(1), "Qemu:ReconnectTimeout", "must be between 00:00:00.001 and 01:00:00");
        Check(StartTimeout > TimeSpan.Zero && StartTimeout <= TimeSpan.FromHours(1), "Qemu:StartTimeout", "must be between 00:00:00.001 and 01:00:00");
        Check(System.Text.RegularExpressions.Regex.IsMatch(User ?? "", "^[a-z_][a-z0-9_-]{0,31}$"), "Qemu:User", "must be a user name ([a-z_][a-z0-9_-]*, at most 32 characters)");
        Check(ImgBinary is null || Path.IsPathRooted(ImgBinary), "Qemu:ImgBinary", "must be an absolute path");
        Check(ImageTimeout > TimeSpan.Zero && ImageTimeout <= TimeSpan.FromMinutes(10), "Qemu:ImageTimeout", "must be between 00:00:00.001 and 00:10:00");
        Check(MemoryOverheadMiB is >= 64 and <= 65536, "Qemu:MemoryOverheadMiB", "must be between 64 and 65536");
        Check(PidsMax is >= 32 and <= 65536, "Qemu:PidsMax", "must be between 32 and 65536");
        return errors;
    }
}
