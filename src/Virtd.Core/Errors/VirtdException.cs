namespace Virtd.Core.Errors;

/// <summary>Stable error codes of the REST contract (API.md).</summary>
public static class ErrorCodes
{
    public const string ValidationFailed = "validation-failed";
    public const string MalformedJson = "malformed-json";
    public const string DomainNotFound = "domain-not-found";
    public const string JobNotFound = "job-not-found";
    public const string DomainExists = "domain-exists";
    public const string InvalidState = "invalid-state";
    public const string DomainBusy = "domain-busy";
    public const string DomainActive = "domain-active";
    public const string EtagMismatch = "etag-mismatch";
    public const string PayloadTooLarge = "payload-too-large";
    public const string UnsupportedMediaType = "unsupported-media-type";
    public const string QueueFull = "queue-full";
    public const string ShuttingDown = "shutting-down";
    public const string NotReady = "not-ready";
    public const string HypervisorUnavailable = "hypervisor-unavailable";
    public const string JobNotCancellable = "job-not-cancellable";
    public const string MonitorTimeout = "monitor-timeout";
    public const string DestroyTimeout = "destroy-timeout";
    public const string ShutdownTimeout = "shutdown-timeout";
    public const string HypervisorError = "hypervisor-error";
    public const string Cancelled = "cancelled";
    public const string Superseded = "superseded";
    public const string Internal = "internal";
    public const string NotFound = "not-found";
    public const string MethodNotAllowed = "method-not-allowed";
    public const string Unauthenticated = "unauthenticated";
    public const string Forbidden = "forbidden";
    public const string CsrfRejected = "csrf-rejected";
    public const string RateLimited = "rate-limited";
    public const string HostNotAllowed = "host-not-allowed";
    public const string TokenExists = "token-exists";
    public const string TokenNotFound = "token-not-found";
    public const string AuditUnavailable = "audit-unavailable";
    public const string Interrupted = "interrupted";
    public const string DaemonRestart = "daemon-restart";
    public const string JournalUnavailable = "journal-unavailable";
    public const string IdempotencyKeyReused = "idempotency-key-reused";
    public const string IdempotencyKeyInFlight = "idempotency-key-in-flight";
    public const string InsufficientStorage = "insufficient-storage";
    public const string InsufficientResources = "insufficient-resources";
    public const string QuotaExceeded = "quota-exceeded";
    public const string TooManyStreams = "too-many-streams";
    public const string ImageUnsafe = "image-unsafe";
    public const string PoolNotFound = "pool-not-found";
    public const string VolumeNotFound = "volume-not-found";
    public const string VolumeExists = "volume-exists";
    public const string VolumeInUse = "volume-in-use";
    public const string VolumeBusy = "volume-busy";
    public const string WebSocketRequired = "websocket-required";
    public const string ConsoleUnavailable = "console-unavailable";
    public const string VncUnavailable = "vnc-unavailable";

    /// <summary>Every code, as the OpenAPI document lists them (a test keeps this list and the constants the same).</summary>
    public static readonly IReadOnlyList<string> All =
    [
        ValidationFailed,
        MalformedJson,
        DomainNotFound,
        JobNotFound,
        DomainExists,
        InvalidState,
        DomainBusy,
        DomainActive,
        EtagMismatch,
        PayloadTooLarge,
        UnsupportedMediaType,
        QueueFull,
        ShuttingDown,
        NotReady,
        HypervisorUnavailable,
        JobNotCancellable,
        MonitorTimeout,
        DestroyTimeout,
        ShutdownTimeout,
        HypervisorError,
        Cancelled,
        Superseded,
        Internal,
        NotFound,
        MethodNotAllowed,
        Unauthenticated,
        Forbidden,
        CsrfRejected,
        RateLimited,
        HostNotAllowed,
        TokenExists,
        TokenNotFound,
        AuditUnavailable,
        Interrupted,
        DaemonRestart,
        JournalUnavailable,
        IdempotencyKeyReused,
        IdempotencyKeyInFlight,
        InsufficientStorage,
        InsufficientResources,
        QuotaExceeded,
        TooManyStreams,
        ImageUnsafe,
        PoolNotFound,
        VolumeNotFound,
        VolumeExists,
        VolumeInUse,
        VolumeBusy,
        WebSocketRequired,
        ConsoleUnavailable,
        VncUnavailable,
    ];
}

/// <summary>
/// An expected failure with a stable code and the HTTP status it maps to.
/// Thrown by the core; turned into problem+json by the API and into <c>job.error</c> by the scheduler.
/// </summary>
public class VirtdException(string code, int status, string title, string detail) : Exception(detail)
{
    public string Code { get; } = code;
    public int Status { get; } = status;
    public string Title { get; } = title;
    public string Detail => Message;

    /// <summary>Seconds a client should wait before retrying (429, 503).</summary>
    public int? RetryAfterSeconds { get; init; }

    /// <summary>The <c>WWW-Authenticate</c> challenge of a 401.</summary>
    public string? Challenge { get; init; }

    /// <summary>Field errors keyed by camelCase JSON path (validation only).</summary>
    public IReadOnlyDictionary<string, string[]>? Errors { get; init; }

    public static VirtdException DomainNotFound(string id) =>
        new(ErrorCodes.DomainNotFound, 404, "Domain not found", $"no domain named or with UUID '{id}'");

    public static VirtdException JobNotFound(string id) =>
        new(ErrorCodes.JobNotFound, 404, "Job not found", $"no job with id '{id}' (finished jobs are kept for a limited time)");

    public static VirtdException InvalidState(string detail) =>
        new(ErrorCodes.InvalidState, 409, "Invalid state for this action", detail);

    public static VirtdException Validation(IReadOnlyDictionary<string, string[]> errors) =>
        new(ErrorCodes.ValidationFailed, 400, "Validation failed",
            errors.Count == 1 ? $"{errors.First().Key}: {errors.First().Value[0]}" : $"{errors.Count} fields are invalid")
        { Errors = errors };

    public static VirtdException Validation(string field, string message) =>
        Validation(new Dictionary<string, string[]> { [field] = [message] });

    public static VirtdException QueueFull(string detail, int retryAfter) =>
        new(ErrorCodes.QueueFull, 429, "Job queue full", detail) { RetryAfterSeconds = retryAfter };

    public static VirtdException ShuttingDown() =>
        new(ErrorCodes.ShuttingDown, 503, "Daemon shutting down", "the daemon is shutting down and accepts no new work")
        { RetryAfterSeconds = 5 };

    public static VirtdException MonitorTimeout(string domain, TimeSpan timeout) =>
        new(ErrorCodes.MonitorTimeout, 504, "Monitor timeout",
            $"the monitor of domain '{domain}' did not answer within {timeout.TotalSeconds:0.###} s. The command was sent and may still " +
            "take effect if the hypervisor catches up: the domain's state will show it, and its domain.lifecycle event will name this job");

    /// <summary>507: the disk (or the quota) is full; nothing was half-written.</summary>
    public static VirtdException InsufficientStorage(string what) =>
        new(ErrorCodes.InsufficientStorage, 507, "Insufficient storage", $"{what}: the disk is full; nothing was changed")
        { RetryAfterSeconds = 30 };

    /// <summary>
    /// What an I/O error was, for a client: the system's words for its errno ("No space left on device"), never
    /// .NET's message, which names the host path.
    /// </summary>
    public static string Describe(Exception e) => e switch
    {
        IOException { HResult: > 0 and < 4096 } io => new System.ComponentModel.Win32Exception(io.HResult).Message,
        UnauthorizedAccessException => "permission denied",
        _ => "an I/O error",
    };

    /// <summary>ENOSPC or EDQUOT: on Linux, .NET's IOException carries the errno as its HResult.</summary>
    public static bool IsDiskFull(Exception e) => e is IOException { HResult: 28 or 122 };

    public static VirtdException HypervisorError(string detail) =>
        new(ErrorCodes.HypervisorError, 500, "Hypervisor error", detail);
}
