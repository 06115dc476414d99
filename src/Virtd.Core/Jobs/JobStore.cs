using System.Collections.Concurrent;
using Virtd.Core.Configuration;

namespace Virtd.Core.Jobs;

/// <summary>
/// Jobs by id for <c>GET /jobs</c>. Unfinished jobs stay; finished ones are kept for
/// <c>Jobs:Retention</c> and at most <c>Jobs:RetentionCount</c> of them, oldest dropped first.
/// </summary>
public sealed class JobStore(JobsOptions options, TimeProvider time)
{
    private readonly ConcurrentDictionary<Guid, Job> _jobs = new();
    private readonly ConcurrentQueue<Job> _finished = new();
    private int _finishedCount;

    public void Add(Job job) => _jobs[job.Id] = job;

    public Job? Find(Guid id) => _jobs.TryGetValue(id, out var j) ? j : null;

    public int Count => _jobs.Count;

    internal void MarkFinished(Job job)
    {
        _finished.Enqueue(job);
        Interlocked.Increment(ref _finishedCount);
        Prune();
    }

    private void Prune()
    {
        var cutoff = time.GetUtcNow() - options.Retention;
        while (_finished.TryPeek(out var oldest)
               && (Volatile.Read(ref _finishedCount) > options.RetentionCount || oldest.FinishedAt < cutoff)
               && _finished.TryDequeue(out oldest))
        {
            Interlocked.Decrement(ref _finishedCount);
            _jobs.TryRemove(oldest.Id, out _);
        }
    }

    /// <summary>Newest first.</summary>
    public List<Job> List(Func<Job, bool>? filter = null, int limit = int.MaxValue)
    {
        Prune();
        var list = new List<Job>();
        foreach (var j in _jobs.Values) if (filter is null || filter(j)) list.Add(j);
        list.Sort((a, b) => Compare(b, a.CreatedAt.UtcTicks, a.Id));
        if (list.Count > limit) list.RemoveRange(limit, list.Count - limit);
        return list;
    }

    /// <summary>The order of lists (newest first is descending): creation time, then id.</summary>
    public static int Compare(Job job, long createdTicks, Guid id)
    {
        var c = job.CreatedAt.UtcTicks.CompareTo(createdTicks);
        return c != 0 ? c : job.Id.CompareTo(id);
    }

    /// <summary>Jobs read back from the journal at start, all finished: kept by the same retention as any other.</summary>
    public void Restore(IEnumerable<Job> jobs)
    {
        foreach (var job in jobs.OrderBy(j => j.FinishedAt))
        {
            _jobs[job.Id] = job;
            _finished.Enqueue(job);
            Interlocked.Increment(ref _finishedCount);
        }
        Prune();
    }

    /// <summary>Every job still known, as journal records, oldest first: what a rewrite of the journal keeps.</summary>
    public IReadOnlyList<JournalRecord> JournalRecords()
    {
        Prune();
        var records = new List<JournalRecord>(_jobs.Count * 3);
        foreach (var job in _jobs.Values.OrderBy(j => j.CreatedAt))
        {
            records.Add(JournalRecord.Accepted(job));
            if (job.IsFinished) records.Add(JournalRecord.Finished(job)); // with its start time
            else if (job.StartedAt is not null) records.Add(JournalRecord.Started(job));
        }
        return records;
    }

    /// <summary>Jobs not yet finished (for shutdown).</summary>
    public IEnumerable<Job> Unfinished() => _jobs.Values.Where(j => !j.IsFinished);
}
