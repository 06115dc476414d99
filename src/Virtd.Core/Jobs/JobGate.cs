using Virtd.Core.Domains;

namespace Virtd.Core.Jobs;

/// <summary>Who holds a gate and what waits behind it, for <c>GET /domains/{id}/gate</c> and error details.</summary>
public sealed record GateSnapshot(Job? Holder, DateTimeOffset? HeldSince, IReadOnlyList<Job> Queued);

/// <summary>
/// At most one state-changing job per domain (libvirt's state change lock), with a FIFO queue.
/// Pure bookkeeping under a small lock: nothing here waits. The scheduler dispatches a job only when
/// it becomes the holder, so queued jobs occupy no worker.
/// </summary>
public sealed class JobGate(DomainObject domain)
{
    private readonly object _lock = new();
    private readonly LinkedList<Job> _queue = new();
    private Job? _holder;
    private DateTimeOffset _heldSince;

    public DomainObject Domain { get; } = domain;

    internal enum Admission { Holder, Queued, Full }

    /// <summary>
    /// Makes <paramref name="job"/> the holder or queues it. <paramref name="admitted"/> runs under this
    /// gate's lock once the job is in, so it happens before any release can hand the job on.
    /// </summary>
    internal Admission Enqueue(Job job, int limit, DateTimeOffset now, Action<Job>? admitted = null)
    {
        lock (_lock)
        {
            if (_holder is null && _queue.Count == 0)
            {
                _holder = job;
                _heldSince = now;
                admitted?.Invoke(job);
                return Admission.Holder;
            }
            if (_queue.Count >= limit) return Admission.Full;
            _queue.AddLast(job);
            admitted?.Invoke(job);
            return Admission.Queued;
        }
    }

    /// <summary>
    /// Puts a destroy at the head of the queue (or makes it the holder) and takes every queued action
    /// job out: they are superseded. Queued API requests (update, undefine) stay, behind the destroy.
    /// </summary>
    internal (bool IsHolder, List<Job> Superseded, Job? Holder) EnqueueDestroy(Job destroy, DateTimeOffset now)
    {
        lock (_lock)
        {
            var superseded = new List<Job>();
            for (var node = _queue.First; node is not null;)
            {
                var next = node.Next;
                if (!node.Value.Inline)
                {
                    superseded.Add(node.Value);
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

    /// <summary>Releases the gate held by <paramref name="job"/>; returns the next holder, if any.</summary>
    internal Job? Release(Job job, DateTimeOffset now)
    {
        lock (_lock)
        {
            if (!ReferenceEquals(_holder, job)) return null;
            _holder = null;
            var next = _queue.First;
            if (next is null) return null;
            _queue.RemoveFirst();
            _holder = next.Value;
            _heldSince = now;
            return next.Value;
        }
    }

    /// <summary>Takes a job out of the queue; false if it is not queued (it may hold the gate by now).</summary>
    internal bool TryRemove(Job job)
    {
        lock (_lock) return _queue.Remove(job);
    }

    public bool IsHeldBy(Job job)
    {
        lock (_lock) return ReferenceEquals(_holder, job);
    }

    public int QueueLength
    {
        get { lock (_lock) return _queue.Count; }
    }

    /// <summary>The holder and since when, without copying the queue (for every domain read).</summary>
    public (Job? Holder, DateTimeOffset Since) Holder()
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
