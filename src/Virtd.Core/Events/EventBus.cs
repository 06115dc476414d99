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
    public const string Resync = "resync";
}

/// <summary>One published event. <see cref="Data"/> is a JSON-serialisable payload record.</summary>
public sealed record VirtdEvent(long Id, string Type, DateTimeOffset Time, string? Domain, object Data);

public sealed class EventsOptions
{
    /// <summary>Events kept for replay to reconnecting clients.</summary>
    public int ReplayBuffer { get; set; } = 10_000;
    /// <summary>Events queued for one subscriber before it is cut off with a resync.</summary>
    public int SubscriberQueue { get; set; } = 4_096;
    public int HeartbeatSeconds { get; set; } = 15;
}

/// <summary>Which events a subscriber wants: domain names and type prefixes (empty = all).</summary>
public sealed record EventFilter(IReadOnlyCollection<string> Domains, IReadOnlyCollection<string> TypePrefixes)
{
    public static readonly EventFilter All = new([], []);

    public bool Matches(VirtdEvent e) =>
        (Domains.Count == 0 || (e.Domain is not null && Domains.Contains(e.Domain)))
        && (TypePrefixes.Count == 0 || TypePrefixes.Any(p => e.Type.StartsWith(p, StringComparison.Ordinal)));
}

/// <summary>
/// In-process event bus with a bounded replay ring. Publishing never waits: ids are assigned and
/// subscribers fed under one short lock (so every subscriber sees id order), each subscriber through
/// a bounded queue that, when full, cuts that subscriber off instead of slowing the publisher.
/// </summary>
public sealed class EventBus
{
    private readonly object _sync = new();
    private readonly VirtdEvent?[] _ring;
    private readonly int _subscriberQueue;
    private readonly TimeProvider _time;
    private long _lastId;
    private Subscription[] _subscribers = [];

    public EventBus(EventsOptions options, TimeProvider time)
    {
        _ring = new VirtdEvent?[Math.Max(1, options.ReplayBuffer)];
        _subscriberQueue = Math.Max(1, options.SubscriberQueue);
        _time = time;
    }

    public long LastId => Interlocked.Read(ref _lastId);

    public int SubscriberCount => Volatile.Read(ref _subscribers).Length;

    public VirtdEvent Publish(string type, string? domain, object data)
    {
        lock (_sync)
        {
            var e = new VirtdEvent(++_lastId, type, _time.GetUtcNow(), domain, data);
            _ring[e.Id % _ring.Length] = e;
            foreach (var s in _subscribers)
            {
                if (s.Filter.Matches(e)) s.Offer(e);
            }
            return e;
        }
    }

    /// <summary>
    /// Subscribes and returns what was missed after <paramref name="lastEventId"/>, atomically with the
    /// registration, so replay and live events meet with no gap and no duplicate.
    /// </summary>
    public Subscription Subscribe(EventFilter filter, long? lastEventId)
    {
        lock (_sync)
        {
            var replay = new List<VirtdEvent>();
            var resync = false;
            if (lastEventId is { } after && after < _lastId)
            {
                var oldest = Math.Max(1, _lastId - _ring.Length + 1);
                if (after + 1 < oldest) resync = true;
                for (var id = Math.Max(after + 1, oldest); id <= _lastId; id++)
                {
                    var e = _ring[id % _ring.Length];
                    if (e is not null && e.Id == id && filter.Matches(e)) replay.Add(e);
                }
            }
            var sub = new Subscription(this, filter, _subscriberQueue, replay, resync);
            _subscribers = [.. _subscribers, sub];
            return sub;
        }
    }

    internal void Remove(Subscription s)
    {
        lock (_sync)
        {
            _subscribers = _subscribers.Where(x => !ReferenceEquals(x, s)).ToArray();
        }
    }

    public sealed class Subscription : IDisposable
    {
        private readonly EventBus _bus;
        private readonly Channel<VirtdEvent> _queue;
        private int _overflowed;

        internal Subscription(EventBus bus, EventFilter filter, int capacity, IReadOnlyList<VirtdEvent> replay, bool resyncFirst)
        {
            _bus = bus;
            Filter = filter;
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
        /// <summary>Missed events to send before live ones.</summary>
        public IReadOnlyList<VirtdEvent> Replay { get; }
        /// <summary>The requested id is older than the replay buffer: send one resync first.</summary>
        public bool ResyncFirst { get; }
        /// <summary>The subscriber fell behind and was cut off.</summary>
        public bool Overflowed => Volatile.Read(ref _overflowed) == 1;
        public ChannelReader<VirtdEvent> Reader => _queue.Reader;

        internal void Offer(VirtdEvent e)
        {
            if (_queue.Writer.TryWrite(e)) return;
            if (Interlocked.Exchange(ref _overflowed, 1) == 0) _queue.Writer.TryComplete();
        }

        public void Dispose()
        {
            _bus.Remove(this);
            _queue.Writer.TryComplete();
        }
    }
}
