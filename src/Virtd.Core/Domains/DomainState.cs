namespace Virtd.Core.Domains;

/// <summary>Runtime state of a domain, as libvirt names them.</summary>
public enum DomainState { ShutOff, Running, Paused, ShuttingDown, Crashed }

/// <summary>Which stage of a shutdown or destroy stopped the VM.</summary>
public enum StopStage { Acpi, Sigterm, Sigkill }

/// <summary>Stable reason strings that go with a state.</summary>
public static class StateReasons
{
    public const string Defined = "defined";
    public const string Booted = "booted";
    public const string Unpaused = "unpaused";
    public const string User = "user";
    public const string Destroyed = "destroyed";
    public const string Shutdown = "shutdown";
    public const string GuestShutdown = "guest-shutdown";
    public const string Crashed = "crashed";
    public const string Failed = "failed";
    public const string DaemonDown = "daemon-down";
    public const string Rebooted = "rebooted";
    public const string Restarted = "restarted";
    public const string Acpi = "acpi";
    /// <summary>Paused by the hypervisor itself (an I/O error, a guest-requested stop), not by a job.</summary>
    public const string Hypervisor = "hypervisor";
    /// <summary>Found running at daemon start; the monitor is being reconnected.</summary>
    public const string Reconnecting = "reconnecting";
    /// <summary>Re-adopted at daemon start; state read from the hypervisor.</summary>
    public const string Reconnected = "reconnected";
    /// <summary>Re-adopted, but the monitor did not answer within the reconnect timeout.</summary>
    public const string MonitorUnresponsive = "monitor-unresponsive";
}

/// <summary>An immutable view of a domain's runtime; replaced as a whole on every change.</summary>
public sealed record RuntimeState(
    DomainState State,
    string Reason,
    DateTimeOffset ChangedAt,
    DateTimeOffset? StartedAt = null,
    int? Pid = null)
{
    public bool IsActive => State is DomainState.Running or DomainState.Paused or DomainState.ShuttingDown;
}
