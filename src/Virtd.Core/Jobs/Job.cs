using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;

namespace Virtd.Core.Jobs;

public enum JobKind { Start, Shutdown, Reboot, Reset, Suspend, Resume, Destroy, Define, Update, Undefine, VolumeCopy }

/// <summary>
/// Where a job is. Every state from <see cref="Succeeded"/> on is final; <see cref="Interrupted"/> is a job that was
/// running when the daemon stopped without ending it (a crash), as found in the journal at the next start.
/// </summary>
public enum JobState { Queued, Running, Succeeded, Failed, Cancelled, Superseded, Interrupted }

/// <summary>What a finished job did.</summary>
public sealed record JobResult
{
    /// <summary>The target state already held: nothing was done.</summary>
    public bool? Noop { get; init; }
    /// <summary>Which stage stopped the VM (shutdown, destroy).</summary>
    public StopStage? StoppedBy { get; init; }
    /// <summary>The domain's state when the job ended.</summary>
    public DomainState? State { get; init; }
    /// <summary>For a job interrupted by a daemon crash: the domain's state as found after the restart.</summary>
    public DomainState? ObservedState { get; init; }

    public static readonly JobResult NoopResult = new() { Noop = true };
}

/// <summary>A job failure in the problem-details shape (RFC 9457) with the stable code.</summary>
public sealed record JobError(string Type, string Title, int Status, string Detail, string Code)
{
    public static JobError From(VirtdException e) => new($"https://virtd.dev/problems/{e.Code}", e.Title, e.Status, e.Detail, e.Code);

    public static JobError Of(string code, string title, int status, string detail) =>
        new($"https://virtd.dev/problems/{code}", title, status, detail, code);
}

/// <summary>
/// Everything about a job that changes, in one immutable record swapped whole, so a reader never
/// sees "succeeded" without its result or finish time.
/// </summary>
public sealed record JobStatus(JobState State, DateTimeOffset? StartedAt, DateTimeOffset? FinishedAt, JobResult? Result, JobError? Error)
{
    public bool IsFinished => State >= JobState.Succeeded;
}

/// <summary>
/// One state-changing action on one domain: its typed command, run by a worker once the job holds the domain's
/// gate. Its status only moves forward (queued → running → one final state, or queued → final) through
/// compare-and-swap.
/// </summary>
public sealed class Job : GateTicket
{
    private JobStatus _status = new(JobState.Queued, null, null, null, null);
    // Null for a job read back from the journal: it ended before this daemon started.
    private readonly CancellationTokenSource? _cts;

    internal Job(JobCommand command, DomainObject domain, DateTimeOffset now, CancellationToken daemonStopping) : base(command.Kind, domain, now)
    {
        Command = command;
        _cts = CancellationTokenSource.CreateLinkedTokenSource(daemonStopping);
    }

    private Job(Guid id, JobCommand command, DomainObject domain, DateTimeOffset createdAt, JobStatus status) : base(command.Kind, domain, createdAt, id)
    {
        Command = command;
        _status = status;
        _finished.TrySetResult();
    }

    /// <summary>What the job does, as the request gave it.</summary>
    public JobCommand Command { get; }

    /// <summary>The trace of the request that queued the job (none when nobody traces): the job's span continues it.</summary>
    public System.Diagnostics.ActivityContext TraceParent { get; internal set; }

    /// <summary>When the job joined its domain's queue (after its journal record was written): where its gate wait starts.</summary>
    internal DateTimeOffset EnqueuedAt { get; set; }
    public bool Priority => Command.Priority;
    /// <summary>Whether a running job of this kind may be cancelled.</summary>
    public bool Cancellable => Command.Cancellable;

    /// <summary>State, times, result and error, read together.</summary>
    public JobStatus Status => Volatile.Read(ref _status);
    public override JobState State => Status.State;
    public bool IsFinished => Status.IsFinished;
    public DateTimeOffset? StartedAt => Status.StartedAt;
    public DateTimeOffset? FinishedAt => Status.FinishedAt;
    public JobResult? Result => Status.Result;
    public JobError? Error => Status.Error;

    /// <summary>Why the token was cancelled, when something other than the caller cancelled it.</summary>
    public string? CancelReason { get; private set; }
    /// <summary>The destroy job that cancelled this running job.</summary>
    public Guid? SupersededBy { get; private set; }

    /// <summary>The VM this job sent SIGTERM to, and when (a destroy signals as it is queued).</summary>
    internal IVmInstance? Signalled { get; set; }
    internal DateTimeOffset SignalledAt { get; set; }

    public CancellationToken Token => _cts?.Token ?? CancellationToken.None;

    private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>Completes when the job reaches a final state.</summary>
    public Task Finished => _finished.Task;

    internal ITimer? WaitTimer;

    private readonly TaskCompletionSource _workerReleased = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes when the job only waits for its VM and no longer needs its worker.</summary>
    internal Task WorkerReleased => _workerReleased.Task;

    /// <summary>The job is about to wait for its VM (and nothing else): its worker may take other jobs meanwhile.</summary>
    internal void ReleaseWorker() => _workerReleased.TrySetResult();

    /// <summary>A job read back from the journal at start, already in its final state.</summary>
    internal static Job Restored(Guid id, JobCommand command, DomainObject domain, DateTimeOffset createdAt, JobStatus status) =>
        new(id, command, domain, createdAt, status);

    /// <summary>Queued → running, once.</summary>
    internal bool TryStart(DateTimeOffset now) =>
        TryMove(JobState.Queued, s => s with { State = JobState.Running, StartedAt = now });

    /// <summary>Into a final state, once, with its outcome. The scheduler then publishes and calls <see cref="Complete"/>.</summary>
    internal bool TryFinish(JobState from, JobState to, JobResult? result, JobError? error, DateTimeOffset now)
    {
        if (!TryMove(from, s => s with { State = to, FinishedAt = now, Result = result, Error = error })) return false;
        WaitTimer?.Dispose();
        return true;
    }

    /// <summary>Wakes waiters (after <c>job.finished</c> was published) and frees the token source.</summary>
    internal void Complete()
    {
        _finished.TrySetResult();
        _cts?.Dispose();
    }

    private bool TryMove(JobState from, Func<JobStatus, JobStatus> next)
    {
        while (true)
        {
            var current = Volatile.Read(ref _status);
            if (current.State != from) return false;
            if (Interlocked.CompareExchange(ref _status, next(current), current) == current) return true;
        }
    }

    internal void CancelRunning(string reason, Guid? supersededBy = null)
    {
        CancelReason ??= reason;
        SupersededBy ??= supersededBy;
        try { _cts?.Cancel(); }
        catch (ObjectDisposedException) { /* finished meanwhile */ }
    }
}
