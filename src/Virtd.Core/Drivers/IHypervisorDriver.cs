using Virtd.Core.Domains;

namespace Virtd.Core.Drivers;

public enum VmSignal { Term, Kill }

/// <summary>How a VM process ended.</summary>
public enum VmExitKind
{
    /// <summary>Killed or terminated by a signal from the host (destroy, or someone else's kill).</summary>
    HostSignal,
    /// <summary>The guest powered itself off (ACPI or its own shutdown).</summary>
    GuestShutdown,
    /// <summary>The guest reset and the VM was configured not to reboot.</summary>
    GuestReset,
    /// <summary>Ended unexpectedly: crashed, killed from outside, or failed.</summary>
    Crashed,
    /// <summary>Asked to quit through its monitor.</summary>
    HostQuit,
}

/// <summary>The end of one VM run: how, and what the hypervisor said.</summary>
public sealed record VmExit(VmExitKind Kind, int? ExitCode = null, int? Signal = null, string? Detail = null);

/// <summary>
/// One running VM (one QEMU process, or one simulated VM). Monitor commands honour the token and
/// the driver's monitor timeout; <see cref="Signal"/> never blocks.
/// </summary>
public interface IVmInstance
{
    int Pid { get; }

    /// <summary>Completes once the VM has exited, with how.</summary>
    Task<VmExit> Exited { get; }

    /// <summary>Sends a signal to the VM's process; returns at once.</summary>
    void Signal(VmSignal signal);

    Task PauseAsync(CancellationToken cancellationToken);
    Task ResumeAsync(CancellationToken cancellationToken);
    /// <summary>Hard reset; the VM keeps running.</summary>
    Task ResetAsync(CancellationToken cancellationToken);
    /// <summary>Presses the ACPI power button; returns when the press was delivered, not when the guest is off.</summary>
    Task PowerdownAsync(CancellationToken cancellationToken);
    /// <summary>Asks the guest to reboot, honouring the definition's <c>onReboot</c>; returns when done or exited.</summary>
    Task RebootAsync(CancellationToken cancellationToken);

    /// <summary>The guest's serial console, or null when this VM has none the daemon can reach.</summary>
    Consoles.IVmConsole? Console => null;

    /// <summary>
    /// A new connection to the VM's VNC server speaking RFB, or <c>vnc-unavailable</c> (409) when the VM has no VNC.
    /// The caller owns the stream.
    /// </summary>
    Task<Stream> OpenVncAsync(CancellationToken cancellationToken) =>
        throw new Errors.VirtdException(Errors.ErrorCodes.VncUnavailable, 409, "VNC unavailable", "this domain's VM has no graphical console");

    /// <summary>
    /// Reads the VM's figures (CPU time, memory, block I/O) without its job gate; a hung VM makes this wait until
    /// <paramref name="cancellationToken"/> ends it, so callers bound it. Drivers without figures throw <see cref="NotSupportedException"/>.
    /// </summary>
    Task<VmStats> ReadStatsAsync(CancellationToken cancellationToken) => Task.FromException<VmStats>(new NotSupportedException());
}

/// <summary>One VM's figures at one moment (libvirt's <c>virsh domstats</c>: cpu, balloon, block).</summary>
/// <param name="VcpuSeconds">CPU time its virtual CPUs have used, in seconds (QEMU: its vCPU threads, from /proc).</param>
/// <param name="RssBytes">Resident memory of the hypervisor process.</param>
/// <param name="BalloonActualBytes">Memory the guest has now (the balloon's actual; without a balloon, the defined memory).</param>
/// <param name="Disks">Block I/O per disk, as the hypervisor counts it.</param>
public sealed record VmStats(double VcpuSeconds, long RssBytes, long BalloonActualBytes, IReadOnlyList<DiskStats> Disks);

/// <summary>Block I/O of one disk since the VM started (QEMU's <c>query-blockstats</c>).</summary>
public sealed record DiskStats(string Disk, long ReadBytes, long WriteBytes, long ReadOperations, long WriteOperations,
    double ReadSeconds, double WriteSeconds);

/// <summary>
/// Receives what happens to a VM on its own (exit, a pause the guest or QEMU caused, a guest reboot).
/// Called from the driver's per-VM event handling; each call is ignored when <paramref name="vm"/> is no
/// longer the domain's running VM.
/// </summary>
public interface IVmEventSink
{
    void OnExited(IVmInstance vm, VmExit exit);

    /// <summary>The VM moved to another active state (publishes only when the state differs).</summary>
    void OnStateChanged(IVmInstance vm, DomainState state, string reason, string lifecycleEvent);

    /// <summary>The state was read from the hypervisor (re-adoption): publishes when the state or its reason differs.</summary>
    void OnStateObserved(IVmInstance vm, DomainState state, string reason, string lifecycleEvent);

    /// <summary>Something happened to the guest that does not change its state (a reboot the guest did itself).</summary>
    void OnGuestEvent(IVmInstance vm, string lifecycleEvent);
}

/// <summary>What drivers get at start to hand back VMs that outlived the previous daemon.</summary>
public interface IVmHost
{
    /// <summary>Attaches a running VM found at start (re-adoption) with the definition it runs; returns its event sink.</summary>
    IVmEventSink Adopt(DomainObject domain, IVmInstance vm, DomainDefinition live, DomainState state, string reason, DateTimeOffset startedAt);

    /// <summary>The domain's VM did not survive while no daemon watched it: shut off with <paramref name="reason"/>.</summary>
    void MarkStopped(DomainObject domain, string reason);
}

/// <summary>What <c>GET /host</c> shows of a driver.</summary>
public sealed record HypervisorInfo(DriverKind Driver, bool Available, string? Version, string? Detail, int RunningVms)
{
    /// <summary>The hypervisor binary in use (QEMU).</summary>
    public string? Binary { get; init; }

    /// <summary>The accelerator guests run with: <c>kvm</c> or <c>tcg</c> (QEMU).</summary>
    public string? Accelerator { get; init; }

    /// <summary>Machine types the hypervisor offers, as read from it at start.</summary>
    public IReadOnlyList<string>? Machines { get; init; }

    /// <summary>Whether guests run under QEMU's seccomp sandbox.</summary>
    public bool? Sandbox { get; init; }

    /// <summary>How guests are confined (QEMU): the user they run as, the sandbox, per-VM cgroups.</summary>
    public Confinement? Confinement { get; init; }
}

/// <summary>How a driver's guests are confined.</summary>
/// <param name="User">The user QEMU runs as.</param>
/// <param name="NoNewPrivs">Started with no_new_privs, no capabilities and no supplementary groups.</param>
/// <param name="Sandbox">Under QEMU's seccomp sandbox.</param>
/// <param name="Cgroups">Per-VM cgroups: <c>memory.max</c> and <c>pids.max</c> under this cgroup, or why there are none.</param>
public sealed record Confinement(string User, bool NoNewPrivs, bool Sandbox, string Cgroups);

/// <summary>
/// A hypervisor driver. Life: <see cref="InitializeAsync"/> at start (drivers in parallel);
/// at stop <see cref="ShutdownPrepare"/> (phase 1: signal background work, return at once), then
/// <see cref="ShutdownWaitAsync"/> (phase 2: wait, bounded by the caller), then <see cref="CleanupAsync"/>.
/// </summary>
public interface IHypervisorDriver
{
    DriverKind Kind { get; }

    HypervisorInfo Info { get; }

    /// <summary>
    /// Sets the driver up and takes back, through <paramref name="host"/>, the VMs of <paramref name="domains"/>
    /// that still run. Must not wait for an unresponsive VM: reconnecting runs on after this returns.
    /// </summary>
    Task InitializeAsync(IReadOnlyList<DomainObject> domains, IVmHost host, CancellationToken cancellationToken);

    void ShutdownPrepare();

    /// <summary>Background work still running (what a timed-out shutdown logs), one line each.</summary>
    IEnumerable<string> PendingWork() => [];

    Task ShutdownWaitAsync(CancellationToken cancellationToken);

    ValueTask CleanupAsync();

    /// <summary>The file a domain's serial console is logged to (its last runs), or null when this driver keeps none.</summary>
    string? ConsoleLogPath(Guid uuid) => null;

    /// <summary>Launches the VM of <paramref name="definition"/> and returns it running. On failure nothing is left behind.</summary>
    Task<IVmInstance> LaunchAsync(DomainObject domain, DomainDefinition definition, IVmEventSink sink, CancellationToken cancellationToken);
}

/// <summary>The registered drivers by kind.</summary>
public sealed class DriverCatalog(IEnumerable<IHypervisorDriver> drivers)
{
    private readonly IHypervisorDriver[] _drivers = drivers.ToArray();

    public IReadOnlyList<IHypervisorDriver> All => _drivers;

    public IHypervisorDriver? Find(DriverKind kind) => _drivers.FirstOrDefault(d => d.Kind == kind);

    /// <summary>The driver for <paramref name="kind"/>, or <c>hypervisor-unavailable</c> (409).</summary>
    public IHypervisorDriver Require(DriverKind kind)
    {
        var driver = Find(kind);
        if (driver is { Info.Available: true }) return driver;
        var why = driver?.Info.Detail ?? $"no {kind.ToString().ToLowerInvariant()} driver is built into this daemon";
        throw new Errors.VirtdException(Errors.ErrorCodes.HypervisorUnavailable, 409, "Hypervisor unavailable", why);
    }
}

/// <summary>Checks what a driver would give the hypervisor of a definition's disks (QEMU: each image's whole chain).</summary>
public interface IImageChecker
{
    /// <summary>Problems keyed by JSON path (<c>disks[0]</c>), or null when every disk is fine.</summary>
    Task<IReadOnlyDictionary<string, string[]>?> CheckAsync(Domains.DomainDefinition definition, CancellationToken cancellationToken);
}

/// <summary>What an image file holds, as read with the format given (never probed).</summary>
/// <param name="VirtualSize">The size the guest sees, in bytes.</param>
/// <param name="Allocation">Bytes the file takes on its filesystem.</param>
/// <param name="BackingFile">The backing file's path as resolved (links followed), or as written when it cannot be resolved; null without one.</param>
public sealed record ImageFacts(long VirtualSize, long Allocation, string? BackingFile);

/// <summary>Makes and reads volumes' images (QEMU: qemu-img). Every method throws <see cref="Errors.VirtdException"/> on failure.</summary>
public interface IVolumeTool
{
    /// <summary>Why images other than raw cannot be handled here (qemu-img missing), or null.</summary>
    string? Problem { get; }

    /// <summary>The image's facts read as the given format, as the unprivileged QEMU user; cached until the file changes.</summary>
    Task<ImageFacts> InfoAsync(string path, Domains.DiskFormat format, CancellationToken cancellationToken);

    /// <summary>The format qemu-img recognises in the file's first bytes (only for content whose format the caller did not give).</summary>
    Task<string> ProbeAsync(string path, CancellationToken cancellationToken);

    /// <summary>Null when the image's whole chain is fine for QEMU (every file inside a pool, formats recorded), else why, naming no host path.</summary>
    Task<string?> CheckChainAsync(string path, Domains.DiskFormat format, CancellationToken cancellationToken);

    Task CreateAsync(string path, Domains.DiskFormat format, long capacity, string? backingFile, Domains.DiskFormat? backingFormat, CancellationToken cancellationToken);

    Task ResizeAsync(string path, Domains.DiskFormat format, long capacity, bool shrink, CancellationToken cancellationToken);

    /// <summary>Copies an image's content (its whole chain flattened) into a new file; <paramref name="progress"/> gets 0–100.</summary>
    Task CopyAsync(string source, Domains.DiskFormat sourceFormat, string target, Domains.DiskFormat targetFormat, Action<double> progress, CancellationToken cancellationToken);

    /// <summary>Gives a volume file the owner and mode volumes have (readable by QEMU's user, by nobody else).</summary>
    void Adopt(string path);
}
