using System.Collections.Concurrent;

namespace Virtd.Soak;

/// <summary>
/// Every job the daemon answered with (200 or 202 to an action, or a job seen later), and the final state each reached,
/// from whichever source saw it first: the answer itself, a <c>GET /api/v1/jobs/{id}</c>, or the tracker stream's
/// <c>job.finished</c>. A small ring of recent ids feeds the clients that read and cancel jobs.
/// </summary>
internal sealed class JobTracker
{
    public static readonly HashSet<string> Final = ["succeeded", "failed", "cancelled", "superseded", "interrupted"];

    private readonly ConcurrentDictionary<string, Tracked> _jobs = new();
    private readonly ConcurrentDictionary<string, string> _finishedEvents = new();
    private readonly string[] _recent = new string[512];
    private long _next;

    public int Count => _jobs.Count;

    /// <summary>A job body from an action's answer: tracked from now on.</summary>
    public Tracked? Submitted(JobDto? job)
    {
        if (job is null) return null;
        var t = _jobs.GetOrAdd(job.Id, _ => new Tracked(job.Id, job.Kind, job.Domain));
        _recent[Interlocked.Increment(ref _next) % _recent.Length] = job.Id;
        Observe(t, job.State, job.Error?.Code);
        // The tracker stream may have seen it end before the answer arrived.
        if (_finishedEvents.TryRemove(job.Id, out var state)) Observe(t, state, null);
        return t;
    }

    /// <summary>A job body from any other answer (a GET of the job).</summary>
    public void Seen(JobDto? job)
    {
        if (job is not null && _jobs.TryGetValue(job.Id, out var t)) Observe(t, job.State, job.Error?.Code);
    }

    /// <summary>A <c>job.finished</c> event.</summary>
    public void FinishedEvent(string id, string state, string? errorCode)
    {
        // Kept until its answer arrives (it may come after the event); either order meets the other.
        _finishedEvents[id] = state;
        if (_jobs.TryGetValue(id, out var t))
        {
            Observe(t, state, errorCode);
            _finishedEvents.TryRemove(id, out _);
        }
    }

    public string? RandomRecent(Random rng)
    {
        var n = Interlocked.Read(ref _next);
        return n == 0 ? null : _recent[(n - rng.Next((int)Math.Min(n, _recent.Length))) % _recent.Length];
    }

    public IReadOnlyList<Tracked> Unfinished() => _jobs.Values.Where(j => j.State is null).ToList();

    public IReadOnlyCollection<Tracked> All => (IReadOnlyCollection<Tracked>)_jobs.Values;

    private static void Observe(Tracked t, string? state, string? errorCode)
    {
        if (state is null || !Final.Contains(state)) return;
        lock (t)
        {
            if (t.State is not null) return;
            t.State = state;
            t.ErrorCode = errorCode;
        }
    }

    internal sealed class Tracked(string id, string kind, string domain)
    {
        public string Id => id;
        public string Kind => kind;
        public string Domain => domain;

        /// <summary>The final state, once seen.</summary>
        public string? State { get; set; }

        public string? ErrorCode { get; set; }

        /// <summary>GET answered 404: the job store dropped it, and it drops only finished jobs (Jobs:RetentionCount).</summary>
        public bool Pruned { get; set; }
    }
}
