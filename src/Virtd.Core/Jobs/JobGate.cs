using Virtd.Core.Domains;

namespace Virtd.Core.Jobs;

/// <summary>Who holds a gate and what waits behind it, for <c>GET /domains/{id}/gate</c> and error details.</summary>
public sealed record GateSnapshot(GateTicket? Holder, DateTimeOffset? HeldSince, IReadOnlyList<GateTicket> Queued);

/// <summary>
/// At most one state-changing job or lease per domain (libvirt's state change lock), with a FIFO queue.
/// Pure bookkeeping under a small lock: nothing here waits. The scheduler dispatches a job only when
/// it becomes the holder, so queued jobs occupy no worker.
/// </summary>
public sealed class JobGate(DomainObject domain)
{
    private readonly object _lock = new();
    private readonly LinkedList<GateTicket> _queue = new();
    private GateTicket? _holder;
    private DateTimeOffset _heldSince;

    public DomainObject Domain { get; } = domain;

    internal enum Admission { Holder, Queued, Full }

    /// <summary>
    /// Makes <paramref name="ticket"/> the holder or queues it. <paramref name="admitted"/> runs under this
    /// gate's lock once the ticket is in, so it happens before any release can hand it on.
    /// </summary>
    internal Admission Enqueue(GateTicket ticket, int limit, DateTimeOffset now, Action<GateTicket>? admitted = null)
    {
        lock (_lock)
        {
            if (_holder is null && _queue.Count == 0)
            {
                _holder = ticket;
                _heldSince = now;
                admitted?.Invoke(ticket);
                return Admission.Holder;
            }
            if (_queue.Count >= limit) return Admission.Full;
            _queue.AddLast(ticket);
            admitted?.Invoke(ticket);
            return Admission.Queued;
        }
    }

    /// <summary>Takes the gate only if it is free and nobody waits; false otherwise.</summary>
    internal bool TryTakeNow(GateTicket ticket, DateTimeOffset now)
    {
        lock (_lock)
        {
            if (_holder is not null || _queue.Count > 0) return false;
            _holder = ticket;
            _heldSince = now;
            return true;
        }
    }

    /// <summary>
    /// Puts a destroy at the head of the queue (or makes it the holder) and takes every queued job out: they
    /// are superseded. Queued leases (a request's update or undefine) stay, behind the destroy.
    /// </summary>
    internal (bool IsHolder, List<Job> Superseded, GateTicket? Holder) EnqueueDestroy(Job destroy, DateTimeOffset now)
    {
        lock (_lock)
        {
            var superseded = new List<Job>();
            for (var node = _queue.First; node is not null;)
            {
                var next = node.Next;
                if (node.Value is Job job)
                {
                    superseded.Add(job);
                    _queue.Remove(node);
                }
                node = next;
            }
            if (_holder is null && _queue.Count == 0)
            {
                _holder = destroy;
                _heldSince = now;
                return (true, superseded, null);
            }
            _queue.AddFirst(destroy);
            return (false, superseded, _holder);
        }
    }

    /// <summary>Releases the gate held by <paramref name="ticket"/>; returns the next holder, if any.</summary>
    internal GateTicket? Release(GateTicket ticket, DateTimeOffset now)
    {
        lock (_lock)
        {
            if (!ReferenceEquals(_holder, ticket)) return null;
            _holder = null;
            var next = _queue.First;
            if (next is null) return null;
            _queue.RemoveFirst();
            _holder = next.Value;
            _heldSince = now;
            return next.Value;
        }
    }

    /// <summary>Takes a ticket out of the queue; false if it is not queued (it may hold the gate by now).</summary>
    internal bool TryRemove(GateTicket ticket)
    {
        lock (_lock) return _queue.Remove(ticket);
    }

    public bool IsHeldBy(GateTicket ticket)
    {
        lock (_lock) return ReferenceEquals(_holder, ticket);
    }

    public int QueueLength
    {
        get { lock (_lock) return _queue.Count; }
    }

    /// <summary>
    /// Why the domain's VM is going down, as its stopper says: a destroy waiting in the queue has already sent
    /// SIGTERM and speaks first; otherwise the holder (a shutdown that pressed the power button, a reboot that
    /// will not come back, the daemon stopping its guests). <see cref="StopIntent.None"/> when nobody stops it.
    /// </summary>
    public StopIntent StopIntent
    {
        get
        {
            lock (_lock)
            {
                foreach (var queued in _queue)
                    if (queued.StopIntent == StopIntent.Destroy) return StopIntent.Destroy;
                return _holder?.StopIntent ?? StopIntent.None;
            }
        }
    }

    /// <summary>The holder and since when, without copying the queue (for every domain read).</summary>
    public (GateTicket? Holder, DateTimeOffset Since) Holder()
    {
        lock (_lock) return (_holder, _heldSince);
    }

    public GateSnapshot Snapshot()
    {
        lock (_lock)
        {
            return new GateSnapshot(_holder, _holder is null ? null : _heldSince, [.. _queue]);
        }
    }
}
