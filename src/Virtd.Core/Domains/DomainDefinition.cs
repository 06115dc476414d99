using System.ComponentModel;
using System.Text.Json.Serialization;

namespace Virtd.Core.Domains;

/// <summary>Which hypervisor driver runs a domain.</summary>
public enum DriverKind { Qemu, Simulated }

public enum MachineType { Q35, Pc }

public enum DiskFormat { Raw, Qcow2 }

public enum DiskBus { Virtio, Sata, Ide }

public enum NicMode { User, None }

/// <summary>What happens when the guest powers off, reboots or crashes.</summary>
public enum LifecycleAction { Destroy, Restart }

/// <summary>
/// The persistent definition of a domain. Treated as immutable: an update swaps the whole record. A property with a
/// default of its own has <c>set</c>, not <c>init</c>: System.Text.Json's source generator fills every init-only
/// property in one object initializer, so one that the JSON leaves out would get 0 (or null) instead of its default.
/// The same shape is the REST request body, so every property is what the user wrote. A property with a default of
/// its own (an initializer) states it with <see cref="DefaultValueAttribute"/> too, for the OpenAPI document: a generated
/// client then sends, when told nothing, what the daemon would have taken (a test keeps the two equal).
/// </summary>
public sealed record DomainDefinition
{
    /// <summary>Unique name, <c>^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$</c>.</summary>
    public string Name { get; set; } = "";

    /// <summary>Unique id; generated on define when absent.</summary>
    public Guid? Uuid { get; init; }

    /// <summary>Driver; the daemon's <c>DefaultDriver</c> when absent.</summary>
    public DriverKind? Driver { get; init; }

    /// <summary>Virtual CPUs, 1 to host CPUs × 4 (at most 256).</summary>
    [DefaultValue(1)]
    public int Vcpus { get; set; } = 1;

    /// <summary>Guest memory in MiB, 16 to 1048576.</summary>
    public int MemoryMiB { get; init; }

    [DefaultValue(MachineType.Q35)]
    public MachineType Machine { get; set; } = MachineType.Q35;

    /// <summary>Direct kernel boot; absent means boot from the first disk.</summary>
    public BootConfig? Boot { get; init; }

    /// <summary>The disks; null (as generated clients send for a list they were not given) means none.</summary>
    public IReadOnlyList<DiskConfig> Disks { get => _disks; init => _disks = value ?? []; }

    /// <summary>The NICs; null means none.</summary>
    public IReadOnlyList<NicConfig> Nics { get => _nics; init => _nics = value ?? []; }

    private readonly IReadOnlyList<DiskConfig> _disks = [];
    private readonly IReadOnlyList<NicConfig> _nics = [];

    [DefaultValue(LifecycleAction.Destroy)]
    public LifecycleAction OnPoweroff { get; set; } = LifecycleAction.Destroy;

    [DefaultValue(LifecycleAction.Restart)]
    public LifecycleAction OnReboot { get; set; } = LifecycleAction.Restart;

    [DefaultValue(LifecycleAction.Destroy)]
    public LifecycleAction OnCrash { get; set; } = LifecycleAction.Destroy;

    /// <summary>Start the domain when the daemon starts.</summary>
    public bool Autostart { get; init; }

    public string? Description { get; init; }

    /// <summary>The graphical console. Absent (or <c>vnc</c> absent): VNC for a domain with disks, none for a diskless one.</summary>
    public GraphicsConfig? Graphics { get; init; }

    /// <summary>Whether the VM gets a VNC server: <c>graphics.vnc</c> when given, else whether it has disks.</summary>
    [JsonIgnore]
    public bool VncEnabled => Graphics?.Vnc ?? Disks.Count > 0;

    /// <summary>Fault injection for the simulated driver; ignored by other drivers.</summary>
    public SimulationConfig? Simulation { get; init; }

    /// <summary>
    /// Value equality over the lists too (records compare lists by reference). A missing list (<c>null</c> in a file
    /// written by hand) is an empty one.
    /// </summary>
    public bool SameAs(DomainDefinition other) =>
        this with { Disks = [], Nics = [] } == other with { Disks = [], Nics = [] }
        && (Disks ?? []).SequenceEqual(other.Disks ?? []) && (Nics ?? []).SequenceEqual(other.Nics ?? []);
}

public sealed record BootConfig
{
    public string? Kernel { get; init; }
    public string? Initrd { get; init; }
    public string? Cmdline { get; init; }
}

public sealed record DiskConfig
{
    /// <summary>A file inside a storage pool; or give <see cref="Volume"/> instead.</summary>
    public string Path { get; set; } = "";

    /// <summary>A volume, <c>pool/name</c> (<c>GET /api/v1/pools/{pool}/volumes</c>); or give <see cref="Path"/> instead.</summary>
    public string? Volume { get; init; }

    /// <summary>The image's format. Absent: the volume's own format, or raw for a path. Stored as resolved at define.</summary>
    public DiskFormat? Format { get; init; }

    [DefaultValue(DiskBus.Virtio)]
    public DiskBus Bus { get; set; } = DiskBus.Virtio;
    public bool ReadOnly { get; init; }
}

public sealed record GraphicsConfig
{
    /// <summary>
    /// A VNC server reached only through the daemon (<c>GET /api/v1/domains/{id}/vnc</c>, a WebSocket carrying RFB): no TCP
    /// port, no socket file. Absent: on for a domain with disks, off for a diskless one.
    /// </summary>
    public bool? Vnc { get; init; }
}

public sealed record NicConfig
{
    [DefaultValue(NicMode.User)]
    public NicMode Mode { get; set; } = NicMode.User;
}

/// <summary>Per-domain fault injection understood by the simulated driver.</summary>
public sealed record SimulationConfig
{
    /// <summary>Time from launch until the guest runs.</summary>
    public int BootDelayMs { get; init; }

    /// <summary>Time the guest takes to power off after the ACPI power button.</summary>
    public int AcpiShutdownDelayMs { get; init; }

    /// <summary>The guest never reacts to the ACPI power button.</summary>
    public bool IgnoresAcpi { get; init; }

    /// <summary>The process survives SIGTERM (a stopped or wedged QEMU): only SIGKILL ends it.</summary>
    public bool IgnoresSigterm { get; init; }

    /// <summary>Once the VM runs, every monitor command blocks until cancelled or timed out (the boot completes).</summary>
    public bool HangMonitor { get; init; }
}
