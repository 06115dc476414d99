using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;

namespace Virtd.Core.Jobs;

/// <summary>
/// Queues jobs behind their domain's gate and runs them on a worker pool (seed 003).
/// A job is handed to a worker only once it holds its gate, so a hung domain occupies one worker
/// at most and its queue occupies none. Destroy runs on its own priority workers.
/// </summary>
public sealed class JobScheduler : IAsyncDisposable
{
    private readonly JobsOptions _options;
    private readonly EventBus _bus;
    private readonly JobStore _store;
    private readonly TimeProvider _time;
    private readonly ILogger<JobScheduler> _log;
    private readonly Channel<Job> _normal = Channel.CreateUnbounded<Job>(new UnboundedChannelOptions { SingleReader = false });
    private readonly Channel<Job> _priority = Channel.CreateUnbounded<Job>(new UnboundedChannelOptions { SingleReader = false });
    private readonly CancellationTokenSource _stopping = new();
    private Task[] _workers = [];
    private int _queued;
    private int _running;
    private volatile bool _accepting = true;

    public JobScheduler(JobsOptions options, EventBus bus, JobStore store, TimeProvider time, ILogger<JobScheduler> log)
    {
        _options = options;
        _bus = bus;
        _store = store;
        _time = time;
        _log = log;
        _admitted = job =>
        {
            _store.Add(job);
            PublishJob(EventTypes.JobQueued, job);
        };
    }

    private readonly Action<Job> _admitted;

    public JobsOptions Options => _options;
    public int QueuedCount => Volatile.Read(ref _queued);
    public int RunningCount => Volatile.Read(ref _running);
    public bool Accepting => _accepting;

    /// <summary>Starts the workers. Each loop is owned here and awaited by <see cref="DrainAsync"/>.</summary>
    public void Start()
    {
        if (_workers.Length > 0) return;
        var workers = new List<Task>();
        for (var i = 0; i < _options.Workers; i++) workers.Add(Task.Run(() => WorkerLoop(_normal.Reader)));
        for (var i = 0; i < _options.PriorityWorkers; i++) workers.Add(Task.Run(() => WorkerLoop(_priority.Reader)));
        _workers = [.. workers];
    }

    /// <summary>
    /// Queues an action job. Throws <c>queue-full</c> (429) past the global or per-domain limit and
    /// <c>shutting-down</c> (503) once shutdown began. Destroy bypasses both limits and supersedes the
    /// domain's queued jobs; its <paramref name="signal"/> runs once the queued jobs are superseded and
    /// the running one is marked superseded, and before the destroy can reach a worker. So the running job
    /// fails fast and is reported superseded, and the signal can only reach the VM this destroy was for.
    /// <paramref name="before"/> runs once the global limit allows the job and before it is queued; if it throws,
    /// nothing is queued.
    /// </summary>
    public Job Submit(JobKind kind, DomainObject domain, object? args, JobRunner runner, Action? signal = null, BeforeChange? before = null)
    {
        if (!_accepting) throw VirtdException.ShuttingDown();
        var now = _time.GetUtcNow();
        var job = new Job(kind, domain, args, runner, inline: false, now, _stopping.Token);

        var queued = Interlocked.Increment(ref _queued);
        if (!job.Priority && queued > _options.QueueLimit)
        {
            Interlocked.Decrement(ref _queued);
            throw VirtdException.QueueFull($"{_options.QueueLimit} jobs are already queued (Jobs:QueueLimit)", RetryAfter());
        }
        try { before?.Invoke(domain, job.Id); }
        catch
        {
            Interlocked.Decrement(ref _queued);
            job.Complete();
            throw;
        }

        if (job.Priority)
        {
            _store.Add(job);
            PublishJob(EventTypes.JobQueued, job);
            var (isHolder, superseded, holder) = domain.Gate.EnqueueDestroy(job, now);
            foreach (var s in superseded) Finish(s, JobState.Queued, JobState.Superseded, null, SupersededError(s, job));
            if (holder is { Inline: false, Priority: false })
            {
                if (holder.State == JobState.Queued && Finish(holder, JobState.Queued, JobState.Superseded, null, SupersededError(holder, job)))
                    ReleaseGate(holder);
                else
                    holder.CancelRunning($"superseded by destroy job {job.Id}", job.Id);
            }
            signal?.Invoke();
            if (isHolder) Dispatch(job);
            else ArmWaitTimer(job);
            return job;
        }

        // Recorded and published inside the gate's lock: once queued, a release on another thread may
        // hand the job to a worker at once, and job.started must never come before job.queued.
        var admission = domain.Gate.Enqueue(job, _options.PerDomainQueueLimit, now, _admitted);
        if (admission == JobGate.Admission.Full)
        {
            Interlocked.Decrement(ref _queued);
            throw VirtdException.QueueFull(
                $"domain '{domain.Name}' already has {_options.PerDomainQueueLimit} jobs queued (Jobs:PerDomainQueueLimit)", RetryAfter());
        }
        if (admission == JobGate.Admission.Holder) Dispatch(job);
        else ArmWaitTimer(job);
        return job;
    }

    /// <summary>
    /// Takes <paramref name="domain"/>'s gate for an API request that does its work inline (define,
    /// update, undefine). Waits in FIFO order up to <c>Jobs:WaitTimeout</c>, then fails <c>domain-busy</c>.
    /// The caller must pass the returned job to <see cref="ReleaseInline"/>.
    /// </summary>
    public async Task<Job> AcquireInlineAsync(JobKind kind, DomainObject domain, CancellationToken cancellationToken)
    {
        if (!_accepting) throw VirtdException.ShuttingDown();
        var job = new Job(kind, domain, null, null, inline: true, _time.GetUtcNow(), _stopping.Token);
        var admission = domain.Gate.Enqueue(job, int.MaxValue, job.CreatedAt);
        if (admission == JobGate.Admission.Holder) return Granted(job);
        try
        {
            await job.Granted.Task.WaitAsync(_options.WaitTimeout, _time, cancellationToken).ConfigureAwait(false);
            return Granted(job);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            if (!domain.Gate.TryRemove(job))
            {
                // It was handed the gate while timing out: give it straight back.
                ReleaseInline(job);
            }
            if (e is OperationCanceledException) throw;
            throw DomainBusy(domain, job);
        }
    }

    private Job Granted(Job job)
    {
        job.TryStart(_time.GetUtcNow());
        return job;
    }

    public void ReleaseInline(Job job)
    {
        if (!Finish(job, JobState.Running, JobState.Succeeded, null, null)) Finish(job, JobState.Queued, JobState.Cancelled, null, null);
        ReleaseGate(job);
    }

    /// <summary>
    /// Cancels a job: a queued one is taken out and ends <c>cancelled</c>; a running one of a cancellable
    /// kind has its token cancelled. Returns false when the job is running and not cancellable.
    /// Throws <c>invalid-state</c> when it has already finished.
    /// </summary>
    public bool Cancel(Job job, string reason)
    {
        if (job.State == JobState.Queued)
        {
            var inQueue = job.Domain.Gate.TryRemove(job);
            if (Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError(reason)))
            {
                if (!inQueue) ReleaseGate(job); // it held the gate, waiting for a worker
                return true;
            }
        }
        if (job.State == JobState.Running)
        {
            if (!job.Cancellable) return false;
            job.CancelRunning(reason);
            return true;
        }
        throw VirtdException.InvalidState($"job {job.Id} has already finished ({job.State.ToString().ToLowerInvariant()})");
    }

    /// <summary>
    /// Shutdown phase 1: refuse new jobs, end queued ones <c>cancelled</c>, cancel running ones' tokens.
    /// Returns at once.
    /// </summary>
    public void BeginShutdown()
    {
        if (!_accepting) return;
        _accepting = false;
        const string reason = "daemon shutting down";
        foreach (var job in _store.Unfinished().ToList())
        {
            if (job.State == JobState.Queued)
            {
                job.Domain.Gate.TryRemove(job);
                Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError(reason));
            }
        }
        try { _stopping.Cancel(); }
        catch (AggregateException e) { _log.LogWarning(e, "a job's cancellation callback failed"); }
        _normal.Writer.TryComplete();
        _priority.Writer.TryComplete();
    }

    /// <summary>Shutdown phase 2: waits for every worker loop to end (bounded by the caller's token).</summary>
    public Task DrainAsync(CancellationToken cancellationToken)
    {
        BeginShutdown();
        return Task.WhenAll(_workers).WaitAsync(cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        BeginShutdown();
        try { await Task.WhenAll(_workers).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { _log.LogWarning("job workers did not stop within 5 s"); }
        _stopping.Dispose();
    }

    /// <summary>Jobs running right now, for shutdown logs.</summary>
    public IEnumerable<Job> RunningJobs() => _store.Unfinished().Where(j => j.State == JobState.Running);

    private void Dispatch(Job job)
    {
        if (job.Inline)
        {
            job.Granted.TrySetResult();
            return;
        }
        var channel = job.Priority ? _priority : _normal;
        if (!channel.Writer.TryWrite(job))
        {
            // Shutting down: nothing will run it.
            if (Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError("daemon shutting down"))) ReleaseGate(job);
        }
    }

    private void ArmWaitTimer(Job job)
    {
        job.WaitTimer = _time.CreateTimer(static state =>
        {
            var (self, j) = ((JobScheduler, Job))state!;
            if (j.Domain.Gate.TryRemove(j)) self.Finish(j, JobState.Queued, JobState.Failed, null, JobError.From(self.DomainBusy(j.Domain, j)));
        }, (this, job), _options.WaitTimeout, Timeout.InfiniteTimeSpan);
        // The job may have left the queue before the timer was set.
        if (job.State != JobState.Queued) job.WaitTimer.Dispose();
    }

    private async Task WorkerLoop(ChannelReader<Job> reader)
    {
        await foreach (var job in reader.ReadAllAsync().ConfigureAwait(false))
        {
            await RunAsync(job).ConfigureAwait(false);
        }
    }

    private async Task RunAsync(Job job)
    {
        if (!job.TryStart(_time.GetUtcNow()))
        {
            ReleaseGate(job); // cancelled or superseded while waiting for a worker
            return;
        }
        Interlocked.Decrement(ref _queued);
        Interlocked.Increment(ref _running);
        job.WaitTimer?.Dispose();
        PublishJob(EventTypes.JobStarted, job);

        JobResult? result = null;
        JobError? error = null;
        var final = JobState.Succeeded;
        try
        {
            if (job.Domain.Removed) throw VirtdException.DomainNotFound(job.Domain.Name);
            result = await job.Runner!(job, job.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (job.Token.IsCancellationRequested)
        {
            (final, error) = CancelledOutcome(job);
        }
        catch (VirtdException e) when (job.Token.IsCancellationRequested && (e.Code == ErrorCodes.Cancelled || _stopping.IsCancellationRequested))
        {
            // While the daemon stops, a failure of a cancelled job is the stop's doing (a monitor the driver closed).
            (final, error) = CancelledOutcome(job);
        }
        catch (VirtdException e)
        {
            final = JobState.Failed;
            error = JobError.From(e);
        }
        catch (Exception e)
        {
            _log.LogError(e, "job {JobId} ({Kind}) on {Domain} failed unexpectedly", job.Id, job.Kind, job.Domain.Name);
            final = JobState.Failed;
            error = JobError.Of(ErrorCodes.Internal, "Internal error", 500, $"unexpected error: {e.Message}");
        }
        finally
        {
            Interlocked.Decrement(ref _running);
        }
        if (job.SupersededBy is not null && final != JobState.Superseded)
        {
            // A destroy took over while this ran. The runner may not have looked at its token before the
            // destroy's SIGTERM ended the VM, and then took the exit for its own success (a shutdown's
            // "stoppedBy: acpi") or the closed monitor for a failure: either way the destroy did it.
            (final, error) = CancelledOutcome(job);
            result = null;
        }
        Finish(job, JobState.Running, final, result, error);
        ReleaseGate(job);
    }

    private (JobState, JobError) CancelledOutcome(Job job)
    {
        if (job.SupersededBy is { } by)
            return (JobState.Superseded, JobError.Of(ErrorCodes.Superseded, "Superseded", 409, $"superseded by destroy job {by}"));
        return (JobState.Cancelled, CancelledError(job.CancelReason ?? (_stopping.IsCancellationRequested ? "daemon shutting down" : "cancelled")));
    }

    /// <summary>Moves a job into a final state exactly once, records it and publishes <c>job.finished</c>.</summary>
    private bool Finish(Job job, JobState from, JobState to, JobResult? result, JobError? error)
    {
        if (!job.TryFinish(from, to, result, error, _time.GetUtcNow())) return false;
        if (from == JobState.Queued && !job.Inline) Interlocked.Decrement(ref _queued);
        if (!job.Inline)
        {
            PublishJob(EventTypes.JobFinished, job);
            _store.MarkFinished(job);
        }
        job.Complete();
        return true;
    }

    private void ReleaseGate(Job job)
    {
        var next = job.Domain.Gate.Release(job, _time.GetUtcNow());
        if (next is not null) Dispatch(next);
    }

    private void PublishJob(string type, Job job)
    {
        var status = job.Status; // state and error from one snapshot
        _bus.Publish(type, job.Domain.Name,
            new JobEventData(job.Id, job.Kind, status.State, job.Domain.Name, job.Domain.Uuid, status.Error?.Code), job.Domain.Uuid);
    }

    internal VirtdException DomainBusy(DomainObject domain, Job waiting)
    {
        var gate = domain.Gate.Snapshot();
        var holder = gate.Holder;
        var detail = holder is null
            ? $"domain '{domain.Name}' stayed busy for {_options.WaitTimeout.TotalSeconds:0.###} s (Jobs:WaitTimeout)"
            : $"domain '{domain.Name}' is busy: {holder.Kind.ToString().ToLowerInvariant()} job {holder.Id} has held it for " +
              $"{(_time.GetUtcNow() - gate.HeldSince!.Value).TotalSeconds:0.0} s; the {waiting.Kind.ToString().ToLowerInvariant()} " +
              $"waited {_options.WaitTimeout.TotalSeconds:0.###} s (Jobs:WaitTimeout)";
        return new VirtdException(ErrorCodes.DomainBusy, 409, "Domain busy", detail);
    }

    private static JobError CancelledError(string reason) =>
        JobError.Of(ErrorCodes.Cancelled, "Cancelled", 409, $"cancelled: {reason}");

    private static JobError SupersededError(Job job, Job destroy) =>
        JobError.Of(ErrorCodes.Superseded, "Superseded", 409, $"{job.Kind.ToString().ToLowerInvariant()} superseded by destroy job {destroy.Id}");

    private int RetryAfter() => Math.Max(1, (int)Math.Ceiling(_options.WaitTimeout.TotalSeconds / 10));
}
