using Virtd.Core.Domains;

namespace Virtd.Core.Jobs;

/// <summary>Why the holder of a domain's gate is stopping its VM, so that the exit that follows gets the right reason.</summary>
public enum StopIntent { None, Destroy, Shutdown, Restart }

/// <summary>
/// A place in a domain's gate: a <see cref="Job"/> that a worker runs once it holds the gate, or a
/// <see cref="GateLease"/> that a request (define, update, undefine) or the daemon itself holds while it works.
/// Whoever holds the gate says why the VM is going down (<see cref="StopIntent"/>): the intent lives and ends with
/// the one thing that causes the stop.
/// </summary>
public abstract class GateTicket(JobKind kind, DomainObject domain, DateTimeOffset createdAt, Guid? id = null)
{
    private int _stopIntent;

    /// <summary>Time-ordered and unique across daemon restarts (a version 7 UUID).</summary>
    public Guid Id { get; } = id ?? Guid.CreateVersion7(createdAt);
    public JobKind Kind { get; } = kind;
    public DomainObject Domain { get; } = domain;
    public DateTimeOffset CreatedAt { get; } = createdAt;

    /// <summary>Queued, or running once it holds the gate (and, for a job, until it ends).</summary>
    public abstract JobState State { get; }

    /// <summary>Set by the holder before it asks the VM to go down, read by the exit handler through the gate.</summary>
    public StopIntent StopIntent
    {
        get => (StopIntent)Volatile.Read(ref _stopIntent);
        set => Volatile.Write(ref _stopIntent, (int)value);
    }

    public override string ToString() => $"{Kind} {Id} on {Domain.Name}";
}

/// <summary>
/// The gate held by a request that does its work itself (define, update, undefine) or by the daemon stopping a
/// guest. Taken with <see cref="JobScheduler.LeaseAsync"/>; disposing it hands the gate to the next in line.
/// </summary>
public sealed class GateLease : GateTicket, IDisposable
{
    private readonly Action<GateLease> _release;
    private int _released;

    internal GateLease(JobKind kind, DomainObject domain, DateTimeOffset now, Action<GateLease> release) : base(kind, domain, now) =>
        _release = release;

    internal TaskCompletionSource Granted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public override JobState State => Granted.Task.IsCompleted ? JobState.Running : JobState.Queued;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) _release(this);
    }
}
