using System.Security.Cryptography;
using System.Text.Json;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;

namespace Virtd.Core.Domains;

/// <summary>
/// Everything a read needs, in one immutable object: definition, its ETag, what is running and
/// the runtime state. Swapped whole under the domain's small lock; read with one volatile load,
/// so reads never wait for a job.
/// </summary>
public sealed record DomainView(DomainDefinition Definition, string ETag, DomainDefinition? Live, RuntimeState Runtime, IVmInstance? Instance = null)
{
    /// <summary>The running domain runs another definition than the stored one; it takes effect at next start.</summary>
    public bool PendingChanges => Live is not null && !Live.SameAs(Definition);
}

/// <summary>
/// One domain: identity, current view, the job gate, and the running VM handle.
/// Lock order: gate → this object's lock → registry lock (never the other way round).
/// </summary>
public sealed class DomainObject
{
    private readonly object _sync = new();
    private readonly EventBus _bus;
    private volatile DomainView _view;
    private volatile bool _visible;
    private volatile bool _removed;

    public DomainObject(DomainDefinition definition, RuntimeState runtime, EventBus bus)
    {
        Name = definition.Name;
        Uuid = definition.Uuid ?? throw new ArgumentException("definition has no UUID", nameof(definition));
        _bus = bus;
        _view = new DomainView(definition, ComputeETag(definition), null, runtime);
        Gate = new JobGate(this);
    }

    public string Name { get; }
    public Guid Uuid { get; }
    public JobGate Gate { get; }
    public DomainView View => _view;
    public DomainDefinition Definition => _view.Definition;
    public RuntimeState Runtime => _view.Runtime;
    public DriverKind Driver => _view.Definition.Driver ?? DriverKind.Simulated;

    /// <summary>The running VM, or null when none runs. Read <see cref="View"/> to get it with the state it goes with.</summary>
    public IVmInstance? Instance => _view.Instance;

    /// <summary>True once define has committed; a reserved name is not visible to reads.</summary>
    public bool Visible { get => _visible; internal set => _visible = value; }

    /// <summary>True once undefined; jobs that were waiting re-check this after their wait.</summary>
    public bool Removed { get => _removed; internal set => _removed = value; }

    /// <summary>Swaps in a new definition and publishes <c>domain.updated</c> in the same step, so no other event of this domain comes between.</summary>
    public void SetDefinition(DomainDefinition definition)
    {
        lock (_sync)
        {
            _view = _view with { Definition = definition, ETag = ComputeETag(definition) };
            PublishDomainEventLocked(EventTypes.DomainUpdated, null);
        }
    }

    /// <summary>
    /// Publishes <c>domain.defined</c>, then makes the new domain visible to lookups. In this order nothing
    /// else about the domain (a <c>job.queued</c> of a request that found it) can be published before it.
    /// </summary>
    public void Reveal()
    {
        lock (_sync)
        {
            PublishDomainEventLocked(EventTypes.DomainDefined, null);
            _visible = true;
        }
    }

    /// <summary>Records a newly running VM and its state in one step.</summary>
    public void Attach(IVmInstance instance, DomainDefinition live, DomainState state, string reason, string lifecycleEvent, DateTimeOffset now,
        DateTimeOffset? startedAt = null)
    {
        lock (_sync)
        {
            var runtime = new RuntimeState(state, reason, now, startedAt ?? now, instance.Pid);
            _view = _view with { Live = live, Runtime = runtime, Instance = instance };
            PublishDomainEventLocked(EventTypes.DomainLifecycle, lifecycleEvent);
        }
    }

    /// <summary>
    /// Moves a running VM's domain to another active state and publishes the lifecycle event, unless
    /// it is already there (the same state change is never published twice) or <paramref name="vm"/> is no
    /// longer the attached VM: after an await it may have exited, and the state its exit recorded stands.
    /// Returns whether it changed.
    /// Only <see cref="Detach"/> makes a domain inactive.
    /// </summary>
    /// <param name="jobId">The job whose command this change is, when it took effect after the job had ended (a late one).</param>
    public bool Transition(IVmInstance vm, DomainState state, string reason, string lifecycleEvent, DateTimeOffset now, Guid? jobId = null) =>
        Move(vm, state, reason, lifecycleEvent, now, reasonCounts: false, jobId);

    /// <summary>
    /// Records a state read from the hypervisor (re-adoption): like <see cref="Transition"/>, but a changed
    /// reason alone is a change too. Returns whether it changed.
    /// </summary>
    public bool Observe(IVmInstance vm, DomainState state, string reason, string lifecycleEvent, DateTimeOffset now) =>
        Move(vm, state, reason, lifecycleEvent, now, reasonCounts: true);

    private bool Move(IVmInstance vm, DomainState state, string reason, string lifecycleEvent, DateTimeOffset now, bool reasonCounts, Guid? jobId = null)
    {
        if (state is DomainState.ShutOff or DomainState.Crashed)
            throw new ArgumentException("an inactive state comes only with Detach", nameof(state));
        lock (_sync)
        {
            var current = _view.Runtime;
            var same = current.State == state && (!reasonCounts || current.Reason == reason);
            if (same || !ReferenceEquals(_view.Instance, vm)) return false;
            var runtime = current with { State = state, Reason = reason, ChangedAt = now };
            _view = _view with { Runtime = runtime };
            PublishDomainEventLocked(EventTypes.DomainLifecycle, lifecycleEvent, jobId);
            return true;
        }
    }

    /// <summary>An inactive domain whose state must say why (a VM that died while no daemon watched it).</summary>
    public void MarkInactive(DomainState state, string reason, string lifecycleEvent, DateTimeOffset now)
    {
        if (state is not (DomainState.ShutOff or DomainState.Crashed))
            throw new ArgumentException("only an inactive state", nameof(state));
        lock (_sync)
        {
            if (_view.Instance is not null) return;
            var runtime = new RuntimeState(state, reason, now);
            _view = _view with { Runtime = runtime, Live = null };
            PublishDomainEventLocked(EventTypes.DomainLifecycle, lifecycleEvent);
        }
    }

    /// <summary>
    /// The VM <paramref name="instance"/> has exited: detach it and move to an inactive state.
    /// Ignored when another instance has replaced it since (a late exit of an old run).
    /// </summary>
    public bool Detach(IVmInstance instance, DomainState state, string reason, string lifecycleEvent, DateTimeOffset now, Guid? jobId = null)
    {
        lock (_sync)
        {
            if (!ReferenceEquals(_view.Instance, instance)) return false;
            var runtime = new RuntimeState(state, reason, now);
            _view = _view with { Runtime = runtime, Live = null, Instance = null };
            PublishDomainEventLocked(EventTypes.DomainLifecycle, lifecycleEvent, jobId);
            return true;
        }
    }

    /// <summary>Publishes an event about this domain while holding its lock, so events follow state order.</summary>
    public void PublishDomainEvent(string type, string? lifecycleEvent = null)
    {
        lock (_sync) PublishDomainEventLocked(type, lifecycleEvent);
    }

    /// <summary>
    /// Publishes a lifecycle event that changes no state (<c>reset</c>, <c>rebooted</c>) only while
    /// <paramref name="vm"/> is still the attached VM: once it has exited, its exit was the last word.
    /// </summary>
    public bool Announce(IVmInstance vm, string lifecycleEvent)
    {
        lock (_sync)
        {
            if (!ReferenceEquals(_view.Instance, vm)) return false;
            PublishDomainEventLocked(EventTypes.DomainLifecycle, lifecycleEvent);
            return true;
        }
    }

    private void PublishDomainEventLocked(string type, string? lifecycleEvent, Guid? jobId = null)
    {
        var r = _view.Runtime;
        _bus.Publish(type, Name, new DomainEventData(Name, Uuid, lifecycleEvent, r.State, r.Reason, jobId), Uuid);
    }

    public static string ComputeETag(DomainDefinition definition)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(definition, VirtdJson.Definition);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(bytes, hash);
        return "\"" + Convert.ToHexStringLower(hash[..12]) + "\"";
    }

    public override string ToString() => Name;
}
