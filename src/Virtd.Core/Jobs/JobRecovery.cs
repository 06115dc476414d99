using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;

namespace Virtd.Core.Jobs;

/// <summary>
/// What the journal says about jobs after a restart. Every job it accepted is found again: finished ones as they
/// ended; one still queued when the daemon went away ends <c>cancelled</c> (<c>daemon-restart</c>); one that was
/// running ends <c>interrupted</c>, with the domain's state as found after re-adoption. None of them holds a gate.
/// </summary>
public sealed class JobRecovery
{
    private readonly List<Entry> _jobs = [];
    private readonly List<JournalRecord> _keys = [];

    private sealed class Entry(JournalRecord accepted)
    {
        public JournalRecord Accepted { get; } = accepted;
        public DateTimeOffset? StartedAt { get; set; }
        public JournalRecord? Finished { get; set; }
    }

    /// <summary>Groups the records by job; a record for a job the journal no longer has (dropped by a rewrite) is ignored.</summary>
    public static JobRecovery Read(JournalContents contents)
    {
        var recovery = new JobRecovery();
        var byId = new Dictionary<Guid, Entry>();
        foreach (var r in contents.Records)
        {
            switch (r.T)
            {
                case JournalRecordType.Accepted when r is { Job: { } id, Command: not null, Domain: not null, DomainUuid: not null }:
                    if (byId.TryAdd(id, new Entry(r))) recovery._jobs.Add(byId[id]);
                    break;
                case JournalRecordType.Started when r.Job is { } id && byId.TryGetValue(id, out var e):
                    e.StartedAt ??= r.At;
                    break;
                case JournalRecordType.Finished when r is { Job: { } id, State: { } } && byId.TryGetValue(id, out var e):
                    e.Finished ??= r;
                    break;
                case JournalRecordType.Key when r is { Identity: not null, Key: not null, Fingerprint: not null }:
                    recovery._keys.Add(r);
                    break;
            }
        }
        return recovery;
    }

    public int Count => _jobs.Count;
    public int Unfinished => _jobs.Count(j => j.Finished is null);
    public IReadOnlyList<JournalRecord> KeyRecords => _keys;

    /// <summary>
    /// The jobs as they end up, once the drivers have re-adopted the VMs (so that an interrupted job reports the state
    /// the domain is really in), and the <c>finished</c> records of those the restart ended.
    /// </summary>
    public (IReadOnlyList<Job> Jobs, IReadOnlyList<JournalRecord> Ended) Resolve(DomainRegistry registry, EventBus bus, DateTimeOffset now)
    {
        var domains = new Dictionary<Guid, DomainObject>();
        var jobs = new List<Job>(_jobs.Count);
        var ended = new List<JournalRecord>();
        foreach (var e in _jobs)
        {
            var a = e.Accepted;
            var domain = Domain(a, registry, domains, bus);
            JobStatus status;
            if (e.Finished is { } f)
            {
                status = new JobStatus(f.State!.Value, e.StartedAt ?? f.StartedAt, f.At, f.Result, f.Error);
            }
            else if (e.StartedAt is { } started)
            {
                var observed = domain.Runtime.State;
                status = new JobStatus(JobState.Interrupted, started, now, new JobResult { ObservedState = observed },
                    JobError.Of(ErrorCodes.Interrupted, "Interrupted", 500,
                        $"the daemon stopped while this {a.Command!.Name} job ran (it started at {started:O}); after the restart domain " +
                        $"'{a.Domain}' was found {DomainLifecycle.Describe(observed)} (result.observedState)"));
            }
            else
            {
                status = new JobStatus(JobState.Cancelled, null, now, null,
                    JobError.Of(ErrorCodes.DaemonRestart, "Cancelled by a daemon restart", 409,
                        $"the daemon stopped before this {a.Command!.Name} job could run; nothing was done. Send it again if it is still wanted"));
            }
            var job = Job.Restored(a.Job!.Value, a.Command!, domain, a.At, status);
            jobs.Add(job);
            if (e.Finished is null) ended.Add(JournalRecord.Finished(job));
        }
        return (jobs, ended);
    }

    /// <summary>The job's domain; one that is gone (undefined since) gets a stand-in that only names it. Looked up once per domain.</summary>
    private static DomainObject Domain(JournalRecord accepted, DomainRegistry registry, Dictionary<Guid, DomainObject> seen, EventBus bus)
    {
        var uuid = accepted.DomainUuid!.Value;
        if (seen.TryGetValue(uuid, out var known)) return known;
        if (registry.Find(uuid.ToString()) is { } live) return seen[uuid] = live;
        var ghost = new DomainObject(new DomainDefinition { Name = accepted.Domain!, Uuid = uuid, MemoryMiB = 16 },
            new RuntimeState(DomainState.ShutOff, "undefined", accepted.At), bus) { Removed = true };
        return seen[uuid] = ghost;
    }
}
