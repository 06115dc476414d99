using Virtd.Core.Configuration;

namespace Virtd.Core.Jobs;

/// <summary>
/// Idempotency-Key (IETF httpapi draft): per caller identity, a key stands for the first request that used it, by
/// the fingerprint of its method, path and body, and for the answer it got. Kept for <c>Jobs:IdempotencyWindow</c>
/// and at most <c>Jobs:IdempotencyKeys</c> of them (oldest first out), in memory and in the job journal.
/// </summary>
public sealed class IdempotencyKeys(JobsOptions options, TimeProvider time)
{
    public const int MaxKeyLength = 255;

    private readonly Lock _lock = new();
    private readonly Dictionary<(string Identity, string Key), Entry> _entries = [];
    private readonly LinkedList<Entry> _byAge = new();

    public enum Outcome
    {
        /// <summary>A new key: go on, then <see cref="Answer"/> (or <see cref="Abandon"/>).</summary>
        Proceed,
        /// <summary>The key's first request has been answered: answer the same again.</summary>
        Replay,
        /// <summary>The key's first request is still being answered.</summary>
        InFlight,
        /// <summary>The key was first used with another request.</summary>
        Reused,
    }

    /// <summary>One key, from its first request on.</summary>
    public sealed class Entry(string identity, string key, string fingerprint, DateTimeOffset at)
    {
        public string Identity { get; } = identity;
        public string Key { get; } = key;
        public string Fingerprint { get; } = fingerprint;
        public DateTimeOffset At { get; } = at;
        /// <summary>The status of the first answer; null while it is being answered.</summary>
        public int? Status { get; internal set; }
        /// <summary>What the first request made: <c>job:ID</c>, <c>domain:NAME</c>, <c>token:NAME</c>.</summary>
        public string? Resource { get; internal set; }
        internal LinkedListNode<Entry>? Node { get; set; }

        /// <summary>The key record that goes into the journal with the job it made, so a retry after a crash finds that job.</summary>
        public JournalRecord ReserveFor(Job job)
        {
            Resource = "job:" + job.Id.ToString("D");
            return Record();
        }

        internal JournalRecord Record() => new()
        {
            T = JournalRecordType.Key, At = At, Identity = Identity, Key = Key, Fingerprint = Fingerprint, Status = Status, Resource = Resource,
        };
    }

    public int Count
    {
        get { lock (_lock) return _entries.Count; }
    }

    public (Outcome Outcome, Entry Entry) Begin(string identity, string key, string fingerprint)
    {
        var now = time.GetUtcNow();
        lock (_lock)
        {
            Expire(now);
            if (_entries.TryGetValue((identity, key), out var e))
            {
                if (e.Fingerprint != fingerprint) return (Outcome.Reused, e);
                return (e.Status is null ? Outcome.InFlight : Outcome.Replay, e);
            }
            e = new Entry(identity, key, fingerprint, now);
            Add(e);
            return (Outcome.Proceed, e);
        }
    }

    /// <summary>The first request was answered: its status and what it made stand for the key from now on.</summary>
    public JournalRecord Answer(Entry entry, int status, string resource)
    {
        lock (_lock)
        {
            entry.Status = status;
            entry.Resource = resource;
            return entry.Record();
        }
    }

    /// <summary>The first request failed: the key is free for a retry.</summary>
    public void Abandon(Entry entry)
    {
        lock (_lock)
        {
            if (entry.Status is not null || !_entries.TryGetValue((entry.Identity, entry.Key), out var current) || current != entry) return;
            Remove(entry);
        }
    }

    /// <summary>Keys read back from the journal: the last record of each wins. A job's reservation whose answer was not written stands for 202.</summary>
    public void Restore(IEnumerable<JournalRecord> records)
    {
        var now = time.GetUtcNow();
        lock (_lock)
        {
            foreach (var r in records.OrderBy(r => r.At))
            {
                if (now - r.At > options.IdempotencyWindow) continue;
                if (_entries.TryGetValue((r.Identity!, r.Key!), out var old)) Remove(old);
                Add(new Entry(r.Identity!, r.Key!, r.Fingerprint!, r.At) { Status = r.Status ?? (r.Resource is not null ? 202 : null), Resource = r.Resource });
            }
            foreach (var unanswered in _byAge.Where(e => e.Status is null).ToList()) Remove(unanswered);
        }
    }

    /// <summary>The answered keys still in the window, for a rewrite of the journal.</summary>
    public IReadOnlyList<JournalRecord> Records()
    {
        lock (_lock)
        {
            Expire(time.GetUtcNow());
            return [.. _byAge.Where(e => e.Status is not null || e.Resource is not null).Select(e => e.Record())];
        }
    }

    private void Add(Entry e)
    {
        while (_entries.Count >= options.IdempotencyKeys && _byAge.First is { } oldest) Remove(oldest.Value);
        _entries[(e.Identity, e.Key)] = e;
        e.Node = _byAge.AddLast(e);
    }

    private void Remove(Entry e)
    {
        _entries.Remove((e.Identity, e.Key));
        if (e.Node is not null) _byAge.Remove(e.Node);
        e.Node = null;
    }

    private void Expire(DateTimeOffset now)
    {
        while (_byAge.First is { } oldest && now - oldest.Value.At > options.IdempotencyWindow) Remove(oldest.Value);
    }
}
