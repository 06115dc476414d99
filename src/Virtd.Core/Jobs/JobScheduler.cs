using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Observability;

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
    private readonly DomainLifecycle _lifecycle;
    private readonly TimeProvider _time;
    private readonly ILogger<JobScheduler> _log;
    private readonly Channel<Job> _normal = Channel.CreateUnbounded<Job>(new UnboundedChannelOptions { SingleReader = false });
    private readonly Channel<Job> _priority = Channel.CreateUnbounded<Job>(new UnboundedChannelOptions { SingleReader = false });
    private readonly CancellationTokenSource _stopping = new();
    private readonly JobCounts _counts = new();
    private readonly JobJournal? _journal;
    private readonly VirtdMetrics _metrics;
    private Task[] _workers = [];
    private int _busyNormal;
    private int _busyPriority;
    private volatile bool _accepting = true;

    /// <param name="journal">Where jobs are made durable (null: they live in memory only, as in tests or with <c>Jobs:Journal=false</c>).</param>
    public JobScheduler(JobsOptions options, EventBus bus, JobStore store, DomainLifecycle lifecycle, TimeProvider time, ILogger<JobScheduler> log,
        JobJournal? journal = null, VirtdMetrics? metrics = null)
    {
        _journal = journal;
        _metrics = metrics ?? VirtdMetrics.None;
        _options = options;
        _bus = bus;
        _store = store;
        _lifecycle = lifecycle;
        _time = time;
        _log = log;
        _admitted = ticket =>
        {
            var job = (Job)ticket;
            _store.Add(job);
            PublishJob(EventTypes.JobQueued, job);
        };
    }

    private readonly Action<GateTicket> _admitted;

    public JobsOptions Options => _options;
    public int QueuedCount => _counts.Queued;
    public int RunningCount => _counts.Running;
    public bool Accepting => _accepting;

    /// <summary>Normal workers running a job right now (not those whose job waits for its VM without a worker).</summary>
    public int BusyNormalWorkers => Volatile.Read(ref _busyNormal);

    /// <summary>Priority (destroy) workers running a job right now.</summary>
    public int BusyPriorityWorkers => Volatile.Read(ref _busyPriority);

    /// <summary>Starts the workers. Each loop is owned here and awaited by <see cref="DrainAsync"/>.</summary>
    public void Start()
    {
        if (_workers.Length > 0) return;
        var workers = new List<Task>();
        for (var i = 0; i < _options.Workers; i++) workers.Add(Task.Run(() => WorkerLoop(_normal.Reader, priority: false)));
        for (var i = 0; i < _options.PriorityWorkers; i++) workers.Add(Task.Run(() => WorkerLoop(_priority.Reader, priority: true)));
        _workers = [.. workers];
    }

    /// <summary>
    /// Queues <paramref name="command"/> as a job on <paramref name="domain"/>. Throws <c>queue-full</c> (429) past the
    /// global or per-domain limit and <c>shutting-down</c> (503) once shutdown began. Destroy bypasses both limits and
    /// supersedes the domain's queued jobs; its <see cref="JobCommand.Admitted"/> (SIGTERM) runs once the queued jobs
    /// are superseded and the running one is marked superseded, and before the destroy can reach a worker. So the
    /// running job fails fast and is reported superseded, and the signal can only reach the VM this destroy was for.
    /// <paramref name="before"/> runs once the limits allow the job and before it is queued; if it throws,
    /// nothing is queued. With a journal the job is queued only once its acceptance (and <paramref name="key"/>'s
    /// reservation) is on disk: a 202 always names a job that a restart will find.
    /// </summary>
    public async Task<Job> SubmitAsync(JobCommand command, DomainObject domain, BeforeChange? before = null, IdempotencyKeys.Entry? key = null)
    {
        var job = Admit(command, domain, before);
        if (_journal is not null)
        {
            try
            {
                await _journal.AppendAsync(key is null ? [JournalRecord.Accepted(job)] : [JournalRecord.Accepted(job), key.ReserveFor(job)]).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Turn(job);
                if (VirtdException.IsDiskFull(e)) throw VirtdException.InsufficientStorage("the job could not be written to the job journal");
                throw new VirtdException(ErrorCodes.JournalUnavailable, 503, "Job journal unavailable",
                    $"the job was not queued because its record could not be written to the job journal: {VirtdException.Describe(e)}") { RetryAfterSeconds = 5 };
            }
            if (!_accepting)
            {
                // Shutdown began while the record was being written: on disk it ends as cancelled.
                Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError("daemon shutting down"));
                _journal.Registered(job.Id);
                throw VirtdException.ShuttingDown();
            }
        }
        else
        {
            key?.ReserveFor(job);
        }
        Enqueue(job);
        _journal?.Registered(job.Id);
        return job;
    }

    /// <summary>
    /// Queues a job at once; its acceptance goes to the journal ahead of anything else about it, but nobody waits for
    /// it to be on disk. For the daemon's own jobs (autostart, a restart after an exit), which no client was promised.
    /// </summary>
    public Job Submit(JobCommand command, DomainObject domain)
    {
        var job = Admit(command, domain, null);
        _journal?.Append(JournalRecord.Accepted(job));
        Enqueue(job);
        return job;
    }

    /// <summary>The checks every job passes before it is written down or queued: accepting, the limits, the caller's hook.</summary>
    private Job Admit(JobCommand command, DomainObject domain, BeforeChange? before)
    {
        if (!_accepting) throw VirtdException.ShuttingDown();
        var job = new Job(command, domain, _time.GetUtcNow(), _stopping.Token) { TraceParent = Activity.Current?.Context ?? default };
        if (!_counts.TryAdmit(job.Priority, _options.QueueLimit))
        {
            job.Complete();
            throw VirtdException.QueueFull($"{_options.QueueLimit} jobs are already queued (Jobs:QueueLimit)", RetryAfter());
        }
        if (!job.Priority && domain.Gate.QueueLength >= _options.PerDomainQueueLimit)
        {
            Turn(job);
            throw PerDomainFull(domain);
        }
        try { before?.Invoke(domain, job.Id); }
        catch
        {
            Turn(job);
            throw;
        }
        return job;
    }

    /// <summary>
    /// Whether a new destroy takes over from the destroy holding the gate: it may send SIGKILL and its deadline
    /// comes first (the one running is graceful, or waits longer). Otherwise it waits behind it, as before.
    /// </summary>
    private bool Overtakes(Job destroy, Job running) =>
        destroy.Command is DestroyCommand { Graceful: false } next && running.Command is DestroyCommand current
        && (current.Graceful || next.Deadline(_time.GetUtcNow()) < current.Deadline(running.SignalledAt == default ? running.CreatedAt : running.SignalledAt));

    /// <summary>A job admitted but then turned away before it was queued.</summary>
    private void Turn(Job job)
    {
        _counts.Withdraw();
        job.Complete();
    }

    private void Enqueue(Job job)
    {
        _metrics.JobAccepted(job.Kind);
        var domain = job.Domain;
        var now = _time.GetUtcNow();
        job.EnqueuedAt = now;
        if (job.Priority)
        {
            _store.Add(job);
            PublishJob(EventTypes.JobQueued, job);
            var (isHolder, superseded, holder) = domain.Gate.EnqueueDestroy(job, now);
            foreach (var s in superseded) Finish(s, JobState.Queued, JobState.Superseded, null, SupersededError(s, job));
            if (holder is Job running && (!running.Priority || Overtakes(job, running)))
            {
                if (running.State != JobState.Queued
                    || !Finish(running, JobState.Queued, JobState.Superseded, null, SupersededError(running, job), holdsGate: true))
                    running.CancelRunning($"superseded by destroy job {job.Id}", job.Id);
            }
            job.Command.Admitted(job, _lifecycle);
            if (isHolder) Dispatch(job);
            else ArmWaitTimer(job);
            return;
        }

        // Recorded and published inside the gate's lock: once queued, a release on another thread may
        // hand the job to a worker at once, and job.started must never come before job.queued. The per-domain
        // limit was checked before the job was written down; two requests racing for the last place may both get it.
        var admission = domain.Gate.Enqueue(job, int.MaxValue, now, _admitted);
        if (admission == JobGate.Admission.Holder) Dispatch(job);
        else ArmWaitTimer(job);
    }

    private VirtdException PerDomainFull(DomainObject domain) => VirtdException.QueueFull(
        $"domain '{domain.Name}' already has {_options.PerDomainQueueLimit} jobs queued (Jobs:PerDomainQueueLimit)", RetryAfter());

    /// <summary>
    /// Takes <paramref name="domain"/>'s gate for a request that does its work itself (define, update, undefine).
    /// Waits in FIFO order up to <c>Jobs:WaitTimeout</c>, then fails <c>domain-busy</c>. Disposing the lease releases it.
    /// </summary>
    public async Task<GateLease> LeaseAsync(JobKind kind, DomainObject domain, CancellationToken cancellationToken)
    {
        if (!_accepting) throw VirtdException.ShuttingDown();
        var lease = new GateLease(kind, domain, _time.GetUtcNow(), ReleaseGate);
        if (domain.Gate.Enqueue(lease, int.MaxValue, lease.CreatedAt) == JobGate.Admission.Holder)
        {
            lease.Granted.TrySetResult();
            return lease;
        }
        try
        {
            await lease.Granted.Task.WaitAsync(_options.WaitTimeout, _time, cancellationToken).ConfigureAwait(false);
            return lease;
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            // Handed the gate while timing out: give it straight back.
            if (!domain.Gate.TryRemove(lease)) lease.Dispose();
            if (e is OperationCanceledException) throw;
            throw DomainBusy(domain, lease);
        }
    }

    /// <summary>
    /// The daemon's own lease while it stops a guest (<c>Guests:OnDaemonStop=shutdown</c>), after the jobs have ended:
    /// taken only if the gate is free, null otherwise. New jobs are refused by then.
    /// </summary>
    public GateLease? LeaseForDaemonStop(DomainObject domain)
    {
        var lease = new GateLease(JobKind.Shutdown, domain, _time.GetUtcNow(), ReleaseGate);
        if (!domain.Gate.TryTakeNow(lease, lease.CreatedAt)) return null;
        lease.Granted.TrySetResult();
        return lease;
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
            // Not in the queue: it held the gate, waiting for a worker.
            if (Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError(reason), holdsGate: !inQueue)) return true;
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
                if (Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError(reason)))
                    _log.LogInformation("shutdown: job {JobId} ({Kind}) on {Domain} cancelled while queued", job.Id, job.Command.Name, job.Domain.Name);
            }
            else if (job.State == JobState.Running)
            {
                _log.LogInformation("shutdown: job {JobId} ({Kind}) on {Domain} running: its token is cancelled", job.Id, job.Command.Name, job.Domain.Name);
            }
        }
        try { _stopping.Cancel(); }
        catch (AggregateException e) { _log.LogWarning(e, "a job's cancellation callback failed"); }
        _normal.Writer.TryComplete();
        _priority.Writer.TryComplete();
    }

    /// <summary>Shutdown phase 2: waits for every worker loop to end (bounded by the caller's token).</summary>
    public async Task DrainAsync(CancellationToken cancellationToken)
    {
        BeginShutdown();
        await Task.WhenAll(_workers).WaitAsync(cancellationToken).ConfigureAwait(false);
        // The workers are done; jobs that let theirs go to wait for a VM end on their own (their tokens are cancelled).
        await Task.WhenAll(_waiting.Keys).WaitAsync(cancellationToken).ConfigureAwait(false);
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

    /// <summary>Hands the gate's new holder on: a lease's request goes on, a job goes to a worker.</summary>
    private void Dispatch(GateTicket ticket)
    {
        if (ticket is GateLease lease)
        {
            lease.Granted.TrySetResult();
            return;
        }
        var job = (Job)ticket;
        var channel = job.Priority ? _priority : _normal;
        if (!channel.Writer.TryWrite(job))
        {
            // Shutting down: nothing will run it.
            Finish(job, JobState.Queued, JobState.Cancelled, null, CancelledError("daemon shutting down"), holdsGate: true);
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

    /// <summary>
    /// One worker: runs a job until it ends, or until it only waits for its VM (a guest's power-off, a process's death):
    /// then the job goes on without a worker (it keeps the gate and its running state) and the worker takes the
    /// next job. So a thousand guests ignoring the ACPI button hold no worker, and other domains' jobs still run.
    /// </summary>
    private async Task WorkerLoop(ChannelReader<Job> reader, bool priority)
    {
        await foreach (var job in reader.ReadAllAsync().ConfigureAwait(false))
        {
            if (priority) Interlocked.Increment(ref _busyPriority); else Interlocked.Increment(ref _busyNormal);
            var run = RunAsync(job);
            try { await Task.WhenAny(run, job.WorkerReleased).ConfigureAwait(false); }
            finally { if (priority) Interlocked.Decrement(ref _busyPriority); else Interlocked.Decrement(ref _busyNormal); }
            if (run.IsCompleted) continue;
            _waiting[run] = 0;
            _ = run.ContinueWith(static (t, state) => ((ConcurrentDictionary<Task, byte>)state!).TryRemove(t, out _), _waiting,
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    // Jobs that released their worker to wait for a VM, until they end: shutdown waits for them too.
    private readonly ConcurrentDictionary<Task, byte> _waiting = new();

    /// <summary>Jobs running without a worker right now (waiting for a VM).</summary>
    public int WaitingCount => _waiting.Count;

    private async Task RunAsync(Job job)
    {
        if (!job.TryStart(_time.GetUtcNow()))
        {
            ReleaseGate(job); // cancelled or superseded while waiting for a worker
            return;
        }
        _counts.Started();
        job.WaitTimer?.Dispose();
        if (job.Domain.Gate.Holder() is { Holder: var holder, Since: var since } && ReferenceEquals(holder, job))
            _metrics.JobGateWait(job.Kind, since - job.EnqueuedAt);
        // One span per job, in the trace of the request that queued it; the driver's QMP commands are its children.
        using var activity = VirtdTracing.Source.StartActivity("job " + VirtdMetrics.Text(job.Kind), ActivityKind.Internal, job.TraceParent);
        activity?.SetTag("virtd.job.id", job.Id.ToString());
        activity?.SetTag("virtd.job.kind", VirtdMetrics.Text(job.Kind));
        activity?.SetTag("virtd.domain.name", job.Domain.Name);
        activity?.SetTag("virtd.domain.uuid", job.Domain.Uuid.ToString());
        _journal?.Append(JournalRecord.Started(job));
        PublishJob(EventTypes.JobStarted, job);

        JobResult? result = null;
        JobError? error = null;
        var final = JobState.Succeeded;
        try
        {
            if (job.Domain.Removed) throw VirtdException.DomainNotFound(job.Domain.Name);
            result = await job.Command.RunAsync(job, _lifecycle, job.Token).ConfigureAwait(false);
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
            // The exception is in the log with the job's id; the job's error says no more (no type names, no host paths).
            error = JobError.Of(ErrorCodes.Internal, "Internal error", 500, $"an unexpected error ended job {job.Id}; it was logged with that id");
        }
        if (job.SupersededBy is not null && final != JobState.Superseded)
        {
            // A destroy took over while this ran. The runner may not have looked at its token before the
            // destroy's SIGTERM ended the VM, and then took the exit for its own success (a shutdown's
            // "stoppedBy: acpi") or the closed monitor for a failure: either way the destroy did it.
            (final, error) = CancelledOutcome(job);
            result = null;
        }
        if (activity is not null)
        {
            activity.SetTag("virtd.job.outcome", VirtdMetrics.Text(final));
            if (error is not null) activity.SetStatus(ActivityStatusCode.Error, error.Code);
        }
        if (!Finish(job, JobState.Running, final, result, error, holdsGate: true)) ReleaseGate(job);
    }

    private (JobState, JobError) CancelledOutcome(Job job)
    {
        if (job.SupersededBy is { } by)
            return (JobState.Superseded, JobError.Of(ErrorCodes.Superseded, "Superseded", 409, $"superseded by destroy job {by}"));
        return (JobState.Cancelled, CancelledError(job.CancelReason ?? (_stopping.IsCancellationRequested ? "daemon shutting down" : "cancelled")));
    }

    /// <summary>
    /// Moves a job into a final state exactly once, records it and publishes <c>job.finished</c>. A job that
    /// <paramref name="holdsGate"/> hands it on before its waiters wake: a client whose <c>?wait=</c> answered never
    /// finds the finished job still holding its domain.
    /// </summary>
    private bool Finish(Job job, JobState from, JobState to, JobResult? result, JobError? error, bool holdsGate = false)
    {
        if (!job.TryFinish(from, to, result, error, _time.GetUtcNow())) return false;
        _counts.Finished(from);
        _metrics.JobFinished(job, to);
        _journal?.Append(JournalRecord.Finished(job));
        PublishJob(EventTypes.JobFinished, job);
        _store.MarkFinished(job);
        if (holdsGate) ReleaseGate(job);
        job.Complete();
        return true;
    }

    private void ReleaseGate(GateTicket ticket)
    {
        var next = ticket.Domain.Gate.Release(ticket, _time.GetUtcNow());
        if (next is not null) Dispatch(next);
    }

    private void PublishJob(string type, Job job)
    {
        var status = job.Status; // state and error from one snapshot
        _bus.Publish(type, job.Domain.Name,
            new JobEventData(job.Id, job.Kind, status.State, job.Domain.Name, job.Domain.Uuid, status.Error?.Code), job.Domain.Uuid);
    }

    internal VirtdException DomainBusy(DomainObject domain, GateTicket waiting)
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

    /// <summary>
    /// The pool's figures, changed in one place: a job is queued from admission until a worker starts it (waiting in
    /// its domain's queue, or holding the gate until a worker is free), then running until it ends.
    /// </summary>
    private sealed class JobCounts
    {
        private int _queued;
        private int _running;

        public int Queued => Volatile.Read(ref _queued);
        public int Running => Volatile.Read(ref _running);

        /// <summary>Counts a new job in; refused past <paramref name="limit"/> unless it is a priority job.</summary>
        public bool TryAdmit(bool priority, int limit)
        {
            if (Interlocked.Increment(ref _queued) <= limit || priority) return true;
            Interlocked.Decrement(ref _queued);
            return false;
        }

        /// <summary>An admitted job that was not queued after all.</summary>
        public void Withdraw() => Interlocked.Decrement(ref _queued);

        public void Started()
        {
            Interlocked.Decrement(ref _queued);
            Interlocked.Increment(ref _running);
        }

        public void Finished(JobState from)
        {
            if (from == JobState.Queued) Interlocked.Decrement(ref _queued);
            else if (from == JobState.Running) Interlocked.Decrement(ref _running);
        }
    }
}
