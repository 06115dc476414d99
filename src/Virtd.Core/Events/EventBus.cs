using System.Threading.Channels;

namespace Virtd.Core.Events;

/// <summary>Event type names (API.md "Events").</summary>
public static class EventTypes
{
    public const string DomainDefined = "domain.defined";
    public const string DomainUpdated = "domain.updated";
    public const string DomainUndefined = "domain.undefined";
    public const string DomainLifecycle = "domain.lifecycle";
    public const string JobQueued = "job.queued";
    public const string JobStarted = "job.started";
    public const string JobFinished = "job.finished";
    public const string DaemonState = "daemon.state";
    /// <summary>Not published on the bus: written to one subscriber that must re-list (it missed events).</summary>
    public const string Resync = "resync";
}

/// <summary>
/// One published event. <see cref="Data"/> is a JSON-serialisable payload record; <see cref="Json"/> is the
/// whole event as JSON, made once on first use and shared by every subscriber.
/// </summary>
public sealed class VirtdEvent(long id, string type, DateTimeOffset time, string? domain, Guid? domainUuid, object data)
{
    private byte[]? _json;

    public long Id { get; } = id;
    public string Type { get; } = type;
    public DateTimeOffset Time { get; } = time;
    /// <summary>The domain's name, for domain and job events.</summary>
    public string? Domain { get; } = domain;
    public Guid? DomainUuid { get; } = domainUuid;
    public object Data { get; } = data;

    /// <summary><c>{"id":…,"type":…,"time":…, then the payload's members}</c>; two threads may both make it, with the same result.</summary>
    public ReadOnlyMemory<byte> Json => _json ??= EventJson.Serialize(this);

    public override string ToString() => $"{Id} {Type} {Domain}";
}

public sealed class EventsOptions
{
    /// <summary>Events kept for replay to reconnecting clients.</summary>
    public int ReplayBuffer { get; set; } = 10_000;
    /// <summary>Events queued for one subscriber before it is cut off with a resync.</summary>
    public int SubscriberQueue { get; set; } = 4_096;
    /// <summary>Seconds between comment lines on an idle stream (proxies close silent connections).</summary>
    public int HeartbeatSeconds { get; set; } = 15;
}

/// <summary>
/// Which events a subscriber wants: domains (names, or UUIDs in text) and type prefixes; an empty list
/// means all. An event without a domain (<c>daemon.state</c>) passes only when no domain is asked for.
/// </summary>
public sealed class EventFilter
{
    public static readonly EventFilter All = new([], []);

    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly HashSet<Guid> _uuids = [];
    private readonly string[] _prefixes;

    public EventFilter(IReadOnlyCollection<string> domains, IReadOnlyCollection<string> typePrefixes)
    {
        Domains = domains;
        TypePrefixes = typePrefixes;
        foreach (var d in domains)
        {
            // A domain name is never a UUID, so a UUID here can only mean the domain that has it.
            if (Guid.TryParse(d, out var uuid)) _uuids.Add(uuid);
            else _names.Add(d);
        }
        _prefixes = typePrefixes.Where(p => p.Length > 0).Distinct(StringComparer.Ordinal).ToArray();
    }

    public IReadOnlyCollection<string> Domains { get; }
    public IReadOnlyCollection<string> TypePrefixes { get; }

    /// <summary>Runs under the bus lock for every subscriber and event: no allocation, no LINQ.</summary>
    public bool Matches(VirtdEvent e)
    {
        if (_names.Count + _uuids.Count > 0
            && !(e.Domain is not null && _names.Contains(e.Domain))
            && !(e.DomainUuid is { } uuid && _uuids.Contains(uuid)))
            return false;
        if (_prefixes.Length == 0) return true;
        foreach (var p in _prefixes)
        {
            if (e.Type.StartsWith(p, StringComparison.Ordinal)) return true;
        }
        return false;
    }
}

/// <summary>
/// In-process event bus with a bounded replay ring. Publishing never waits: ids are assigned and
/// subscribers fed under one short lock (so every subscriber sees id order), each subscriber through
/// a bounded queue that, when full, cuts that subscriber off instead of slowing the publisher.
/// <para>
/// Ids increase across daemon runs too: a run's first id is its start time in microseconds since the
/// Unix epoch. So an id a client kept from an earlier run is older than anything in this run's ring and
/// gets a resync, never a replay of unrelated events that happen to carry the numbers it expects.
/// </para>
/// </summary>
public sealed class EventBus
{
    private readonly object _sync = new();
    private readonly VirtdEvent?[] _ring;
    private readonly int _subscriberQueue;
    private readonly TimeProvider _time;
    private readonly long _firstId;
    private long _lastId;
    private Subscription[] _subscribers = [];

    private readonly Observability.VirtdMetrics _metrics;

    public EventBus(EventsOptions options, TimeProvider time, Observability.VirtdMetrics? metrics = null)
    {
        _metrics = metrics ?? Observability.VirtdMetrics.None;
        _ring = new VirtdEvent?[Math.Max(1, options.ReplayBuffer)];
        _subscriberQueue = Math.Max(1, options.SubscriberQueue);
        _time = time;
        _firstId = time.GetUtcNow().ToUnixTimeMilliseconds() * 1000 + 1;
        _lastId = _firstId - 1;
    }

    /// <summary>The id this run's first event gets.</summary>
    public long FirstId => _firstId;

    /// <summary>
    /// The last published id. Written after the event was offered to every subscriber, so a subscriber whose
    /// queue is empty after reading this has been given every matching event up to it.
    /// </summary>
    public long LastId => Volatile.Read(ref _lastId);

    public int SubscriberCount => Volatile.Read(ref _subscribers).Length;

    private bool _closed;

    /// <summary>
    /// The daemon stops: every subscriber's queue is closed after what it holds, so each stream writes the
    /// events published so far (the last ones of shutdown phase 1 among them) and ends; later subscribers get
    /// a closed queue at once. Publishing still records events in the ring.
    /// </summary>
    public void Close()
    {
        Subscription[] subscribers;
        lock (_sync)
        {
            _closed = true;
            subscribers = _subscribers;
        }
        foreach (var s in subscribers) s.Close();
    }

    public VirtdEvent Publish(string type, string? domain, object data, Guid? domainUuid = null)
    {
        lock (_sync)
        {
            var e = new VirtdEvent(_lastId + 1, type, _time.GetUtcNow(), domain, domainUuid, data);
            _ring[e.Id % _ring.Length] = e;
            List<Subscription>? cut = null;
            foreach (var s in _subscribers)
            {
                if (s.Filter.Matches(e) && !s.Offer(e)) (cut ??= []).Add(s);
            }
            // A subscriber that overflowed gets nothing more: it costs the publisher nothing from now on.
            if (cut is not null)
            {
                _subscribers = _subscribers.Except(cut).ToArray();
                _metrics.EventResyncs.Add(cut.Count);
            }
            Volatile.Write(ref _lastId, e.Id);
            return e;
        }
    }

    /// <summary>
    /// Subscribes and returns what was missed after <paramref name="lastEventId"/>, atomically with the
    /// registration, so replay and live events meet with no gap and no duplicate. When the ring no longer
    /// holds every event after that id (or the id is not of this run), nothing is replayed and
    /// <see cref="Subscription.ResyncFirst"/> is set: the client must re-list, then go on from
    /// <see cref="Subscription.Start"/>.
    /// </summary>
    public Subscription Subscribe(EventFilter filter, long? lastEventId)
    {
        lock (_sync)
        {
            var last = _lastId;
            var replay = new List<VirtdEvent>();
            var resync = false;
            if (lastEventId is { } after && after != last)
            {
                var oldest = Math.Max(_firstId, last - _ring.Length + 1);
                if (after > last || after + 1 < oldest)
                {
                    resync = true;
                    _metrics.EventResyncs.Add(1);
                }
                else
                {
                    for (var id = after + 1; id <= last; id++)
                    {
                        var e = _ring[id % _ring.Length]!;
                        if (filter.Matches(e)) replay.Add(e);
                    }
                }
            }
            var sub = new Subscription(this, filter, _subscriberQueue, last, replay, resync);
            if (_closed) sub.Close();
            else _subscribers = [.. _subscribers, sub];
            return sub;
        }
    }

    internal void Remove(Subscription s)
    {
        lock (_sync)
        {
            if (Array.IndexOf(_subscribers, s) >= 0) _subscribers = _subscribers.Where(x => !ReferenceEquals(x, s)).ToArray();
        }
    }

    public sealed class Subscription : IDisposable
    {
        private readonly EventBus _bus;
        private readonly Channel<VirtdEvent> _queue;
        // Continuations run on the thread pool: the publisher that overflows a subscriber never runs its writer.
        private readonly TaskCompletionSource _cutOff = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _overflowed;

        internal Subscription(EventBus bus, EventFilter filter, int capacity, long start, IReadOnlyList<VirtdEvent> replay, bool resyncFirst)
        {
            _bus = bus;
            Filter = filter;
            Start = start;
            Replay = replay;
            ResyncFirst = resyncFirst;
            _queue = Channel.CreateBounded<VirtdEvent>(new BoundedChannelOptions(capacity)
            {
                SingleReader = true,
                SingleWriter = false,
                FullMode = BoundedChannelFullMode.Wait,
            });
        }

        public EventFilter Filter { get; }
        /// <summary>The bus's last id when this subscribed: every matching event after it comes through <see cref="Reader"/>.</summary>
        public long Start { get; }
        /// <summary>Missed events to send before live ones.</summary>
        public IReadOnlyList<VirtdEvent> Replay { get; }
        /// <summary>The requested id is older than the replay buffer (or not of this run): send one resync first.</summary>
        public bool ResyncFirst { get; }
        /// <summary>The subscriber fell behind and was cut off: its queue takes no more events.</summary>
        public bool Overflowed => Volatile.Read(ref _overflowed) == 1;
        /// <summary>Completes when the subscriber is cut off, so a writer blocked on a slow client can give up.</summary>
        public Task CutOff => _cutOff.Task;
        public ChannelReader<VirtdEvent> Reader => _queue.Reader;

        /// <summary>Queues an event; false when the queue was full and the subscriber is now cut off.</summary>
        internal bool Offer(VirtdEvent e)
        {
            if (_queue.Writer.TryWrite(e)) return true;
            if (Interlocked.Exchange(ref _overflowed, 1) == 0)
            {
                _queue.Writer.TryComplete();
                _cutOff.TrySetResult();
            }
            return false;
        }

        internal void Close() => _queue.Writer.TryComplete();

        public void Dispose()
        {
            _bus.Remove(this);
            _queue.Writer.TryComplete();
        }
    }
}
