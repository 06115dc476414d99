using System.Collections.Concurrent;
using System.Text;

namespace Virtd.Stress.Tests.Support;

/// <summary>A job the daemon accepted (202, or 200 with <c>?wait=</c>): it must end in a final state.</summary>
public sealed record AcceptedJob(Guid Id, string Domain, string Kind, DateTimeOffset AcceptedAt);

/// <summary>
/// One observation of a domain's gate holder (from <c>GET /gate</c> or a domain's <c>currentJob</c>),
/// taken somewhere between <paramref name="Sent"/> and <paramref name="Received"/>.
/// </summary>
public sealed record GateSample(string Domain, DateTimeOffset Sent, DateTimeOffset Received, Guid? HolderId, string? HolderKind, string Source);

/// <summary>Everything the clients saw, shared by all of them.</summary>
public sealed class StressRecorder
{
    private const int KeptFailures = 60;
    private readonly ConcurrentDictionary<string, int> _statuses = new();
    private readonly ConcurrentQueue<string> _failures = new();
    private readonly ConcurrentDictionary<string, byte> _seen = new();
    private int _failureCount;
    private int _backoffs;
    private long _requests;

    public ConcurrentDictionary<Guid, AcceptedJob> Accepted { get; } = new();
    public ConcurrentQueue<GateSample> GateSamples { get; } = new();

    public int FailureCount => Volatile.Read(ref _failureCount);
    public int Backoffs => Volatile.Read(ref _backoffs);
    public long Requests => Interlocked.Read(ref _requests);

    public void Count(string op, int status)
    {
        Interlocked.Increment(ref _requests);
        _statuses.AddOrUpdate($"{op} → {status}", 1, (_, n) => n + 1);
    }

    public int CountOf(Func<string, bool> keyFilter) => _statuses.Where(kv => keyFilter(kv.Key)).Sum(kv => kv.Value);

    public void BackedOff() => Interlocked.Increment(ref _backoffs);

    /// <summary>
    /// Something a user would notice went wrong; the test fails at the end with the first few.
    /// The same message (e.g. one bad domain seen by many reads) is kept once.
    /// </summary>
    public void Fail(string message)
    {
        Interlocked.Increment(ref _failureCount);
        if (_seen.Count < KeptFailures && _seen.TryAdd(message, 0)) _failures.Enqueue(message);
    }

    public void Accept(JobView job, string domain, string kind, DateTimeOffset at)
    {
        if (job.Kind != kind) Fail($"POST {kind} on {domain} answered with a {job.Kind} job {job.Id}");
        if (job.Domain != domain) Fail($"POST {kind} on {domain} answered with a job for {job.Domain}");
        Accepted.TryAdd(job.Id, new AcceptedJob(job.Id, domain, kind, at));
    }

    /// <summary>State and pid go together: a VM process exists exactly in the active states.</summary>
    public void CheckDomain(DomainView d, string source)
    {
        var active = Wire.ActiveStates.Contains(d.State);
        if (active != d.Pid.HasValue)
            Fail($"{source}: domain {d} shows state '{d.State}' {(d.Pid.HasValue ? "with" : "without")} a VM process");
        if (d.State is not ("shut-off" or "running" or "paused" or "shutting-down" or "crashed"))
            Fail($"{source}: domain {d} has an unknown state '{d.State}'");
    }

    public string Summary()
    {
        var sb = new StringBuilder();
        foreach (var (k, v) in _statuses.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sb.AppendLine($"  {k}: {v}");
        return sb.ToString();
    }

    public string Failures()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"{FailureCount} failure(s); the first {_failures.Count} distinct ones:");
        foreach (var f in _failures) sb.AppendLine("- " + f);
        return sb.ToString();
    }
}
