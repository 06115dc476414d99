namespace Virtd.Core.Domains;

/// <summary>Body of <c>POST /domains/{id}/shutdown</c>.</summary>
public sealed record ShutdownRequest
{
    public const int DefaultTimeout = 60;

    /// <summary>Seconds to wait for the guest to power off (default 60, 0–3600).</summary>
    public int? Timeout { get; init; }

    /// <summary>On timeout, destroy instead of failing.</summary>
    public bool Force { get; init; }
}

/// <summary>Body of <c>POST /domains/{id}/destroy</c>.</summary>
public sealed record DestroyRequest
{
    public const int DefaultTimeout = 10;

    /// <summary>Never send SIGKILL: fail <c>destroy-timeout</c> if SIGTERM was not enough.</summary>
    public bool Graceful { get; init; }

    /// <summary>Seconds between SIGTERM and SIGKILL (default 10, 0–3600).</summary>
    public int? Timeout { get; init; }
}

/// <summary>The actions of <c>POST /domains/{id}/{action}</c>.</summary>
public enum DomainAction { Start, Shutdown, Reboot, Reset, Suspend, Resume, Destroy }
