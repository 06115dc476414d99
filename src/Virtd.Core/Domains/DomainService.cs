using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Persistence;

namespace Virtd.Core.Domains;

/// <summary>
/// The operations behind the REST API. Definitions change inline under the domain's gate;
/// actions are checked against the current state (fast 404/409) and queued as jobs.
/// </summary>
public sealed class DomainService
{
    private readonly DomainRegistry _registry;
    private readonly JobScheduler _scheduler;
    private readonly DomainStore _store;
    private readonly DomainDefinitionValidator _validator;
    private readonly DriverCatalog _drivers;
    private readonly DomainLifecycle _lifecycle;
    private readonly EventBus _bus;
    private readonly TimeProvider _time;
    private readonly ILogger<DomainService> _log;

    public DomainService(DomainRegistry registry, JobScheduler scheduler, DomainStore store, DomainDefinitionValidator validator,
        DriverCatalog drivers, DomainLifecycle lifecycle, EventBus bus, VirtdOptions options, TimeProvider time, ILogger<DomainService> log,
        ResourceLimits? limits = null, IImageChecker? images = null, Storage.VolumeService? volumes = null)
    {
        _limits = limits;
        _volumes = volumes;
        _images = images;
        _registry = registry;
        _scheduler = scheduler;
        _store = store;
        _validator = validator;
        _drivers = drivers;
        _lifecycle = lifecycle;
        _bus = bus;
        _time = time;
        _log = log;
        _configuredDriver = options.DefaultDriver;
        _hostCpus = validator.HostCpus;
        _lifecycle.RestartRequested = RestartAfterExit;
    }

    private readonly DriverKind? _configuredDriver;
    private readonly ResourceLimits? _limits;
    private readonly IImageChecker? _images;
    private readonly Storage.VolumeService? _volumes;

    /// <summary>Each disk's format as given, else its volume's, else raw: stored explicit, so no later guess changes what QEMU is told.</summary>
    private DomainDefinition Resolved(DomainDefinition d) => d with
    {
        Disks = d.Disks.Select(k => k.Format is not null ? k : k with
        {
            Format = k.Volume is { } v && _volumes is not null && Storage.VolumeRef.TryParse(v, out var r, out _) ? _volumes.FormatOf(r) : DiskFormat.Raw,
        }).ToList(),
    };
    private readonly int _hostCpus;

    /// <summary>The definitions set aside at start, with why (<c>GET /api/v1/host</c>).</summary>
    public IReadOnlyList<Quarantined> Quarantined => _store.Quarantine;

    /// <summary>
    /// The driver a definition without one gets. Unset: QEMU when its driver is built in and found a usable
    /// QEMU (known once the drivers have initialised), else the simulated driver.
    /// </summary>
    public DriverKind DefaultDriver => _configuredDriver
        ?? (_drivers.Find(DriverKind.Qemu) is { Info.Available: true } ? DriverKind.Qemu : DriverKind.Simulated);

    public DomainRegistry Registry => _registry;

    public DomainObject Get(string id) => _registry.Find(id) ?? throw VirtdException.DomainNotFound(id);

    /// <summary>
    /// Loads stored definitions into the registry (start-up, before any request). A file that breaks a rule of a
    /// definition's shape is set aside; its paths are checked again when it starts, not here.
    /// </summary>
    public (int Loaded, IReadOnlyList<Quarantined> SetAside) Load()
    {
        var shape = new DomainDefinitionValidator(null, _hostCpus);
        var (loaded, setAside) = _store.Load(shape.Problem);
        var now = _time.GetUtcNow();
        foreach (var def in loaded)
        {
            var d = new DomainObject(def, new RuntimeState(DomainState.ShutOff, StateReasons.Defined, now), _bus);
            if (_registry.TryReserve(d, out _)) DomainRegistry.Commit(d);
        }
        return (loaded.Count, setAside);
    }

    /// <summary>Starts every autostart domain that is not running (after the drivers have initialised).</summary>
    public void Autostart()
    {
        foreach (var d in _registry.List().Where(d => d.Definition.Autostart && !d.Runtime.IsActive))
        {
            try { Submit(d.Name, new StartCommand()); }
            catch (VirtdException e) { _log.LogWarning("autostart of {Domain} failed: {Detail}", d.Name, e.Detail); }
        }
    }

    public async Task<DomainObject> DefineAsync(DomainDefinition definition, CancellationToken ct, BeforeChange? before = null)
    {
        definition = definition with
        {
            Uuid = definition.Uuid ?? Guid.NewGuid(),
            Driver = definition.Driver ?? DefaultDriver,
        };
        _validator.ValidateOrThrow(definition);
        definition = Resolved(definition);
        await CheckImagesAsync(definition, ct).ConfigureAwait(false);
        var d = new DomainObject(definition, new RuntimeState(DomainState.ShutOff, StateReasons.Defined, _time.GetUtcNow()), _bus);
        if (!_registry.TryReserve(d, out var conflict, _limits?.Options.Domains ?? int.MaxValue))
        {
            if (conflict is null) throw _limits!.QuotaExceeded();
            var what = conflict!.Name == d.Name ? $"name '{d.Name}'" : $"UUID {d.Uuid} (domain '{conflict.Name}')";
            throw new VirtdException(ErrorCodes.DomainExists, 409, "Domain exists", $"a domain with {what} already exists");
        }
        try
        {
            using var lease = await _scheduler.LeaseAsync(JobKind.Define, d, ct).ConfigureAwait(false);
            before?.Invoke(d, null);
            _store.Save(definition);
            d.Reveal(); // publishes domain.defined, then makes it visible
            return d;
        }
        catch
        {
            _registry.Remove(d);
            throw;
        }
    }

    /// <summary>Replaces a definition. A running domain keeps what it runs until its next start (<c>pendingChanges</c>).</summary>
    public async Task<DomainObject> UpdateAsync(string id, DomainDefinition definition, string? ifMatch, CancellationToken ct, BeforeChange? before = null)
    {
        // The disks' chains are read before the gate is taken (qemu-img may take a while); every start reads them again.
        if (_registry.Find(id) is { } current && definition.Name == current.Name)
        {
            var candidate = definition with { Uuid = current.Uuid, Driver = definition.Driver ?? current.Definition.Driver };
            if (_validator.Problem(candidate) is null) await CheckImagesAsync(Resolved(candidate), ct).ConfigureAwait(false);
        }
        return await UnderGateAsync(id, JobKind.Update, ifMatch, d =>
        {
            if (definition.Name != d.Name)
                throw VirtdException.Validation("name", $"cannot change the name (is '{d.Name}'); define a new domain instead");
            if (definition.Uuid is { } u && u != d.Uuid)
                throw VirtdException.Validation("uuid", $"cannot change the UUID (is {d.Uuid})");
            var replacement = definition with { Uuid = d.Uuid, Driver = definition.Driver ?? d.Definition.Driver };
            _validator.ValidateOrThrow(replacement);
            replacement = Resolved(replacement);
            before?.Invoke(d, null);
            if (!replacement.SameAs(d.Definition))
            {
                _store.Save(replacement);
                d.SetDefinition(replacement); // publishes domain.updated
            }
            return d;
        }, ct).ConfigureAwait(false);
    }

    /// <summary>400 <c>validation-failed</c> keyed by disk when the driver would refuse a disk's image chain.</summary>
    private async Task CheckImagesAsync(DomainDefinition definition, CancellationToken ct)
    {
        if (_images is null || definition.Driver != DriverKind.Qemu || definition.Disks is not { Count: > 0 }) return;
        if (await _images.CheckAsync(definition, ct).ConfigureAwait(false) is { Count: > 0 } errors) throw VirtdException.Validation(errors);
    }

    public Task UndefineAsync(string id, string? ifMatch, CancellationToken ct, BeforeChange? before = null) =>
        UnderGateAsync(id, JobKind.Undefine, ifMatch, d =>
        {
            if (d.Runtime.IsActive || d.Instance is not null)
                throw new VirtdException(ErrorCodes.DomainActive, 409, "Domain active",
                    $"domain '{d.Name}' is {DomainLifecycle.Describe(d.Runtime.State)}; destroy or shut it down first");
            before?.Invoke(d, null);
            _store.Delete(d.Name);
            d.PublishDomainEvent(EventTypes.DomainUndefined);
            _registry.Remove(d);
            return d;
        }, ct);

    /// <summary>
    /// Runs a definition change inline under the domain's gate: look up → take the gate → re-check the
    /// domain still exists and <c>If-Match</c> → change → release.
    /// </summary>
    private async Task<DomainObject> UnderGateAsync(string id, JobKind kind, string? ifMatch, Func<DomainObject, DomainObject> change, CancellationToken ct)
    {
        var d = Get(id);
        using var lease = await _scheduler.LeaseAsync(kind, d, ct).ConfigureAwait(false);
        if (d.Removed) throw VirtdException.DomainNotFound(id);
        CheckETag(d, ifMatch);
        return change(d);
    }

    /// <summary>
    /// Looks the domain up, checks the action against its current state (404, 409 <c>invalid-state</c>, 409
    /// <c>hypervisor-unavailable</c>), then queues it. Idempotent cases queue a job that ends <c>noop</c>.
    /// </summary>
    /// <remarks>The job is queued only once it is on disk (the job journal), so the client's 202 names a job a restart will find.</remarks>
    public Task<Job> SubmitAsync(string id, JobCommand command, BeforeChange? before = null, IdempotencyKeys.Entry? key = null)
    {
        var d = Get(id);
        command.Check(d, _lifecycle);
        return _scheduler.SubmitAsync(command, d, before, key);
    }

    /// <summary>The same checks, then queued at once without waiting for the journal: for the daemon's own jobs (autostart) and tests.</summary>
    public Job Submit(string id, JobCommand command)
    {
        var d = Get(id);
        command.Check(d, _lifecycle);
        return _scheduler.Submit(command, d);
    }

    private void RestartAfterExit(DomainObject d)
    {
        try
        {
            _scheduler.Submit(new StartCommand(), d);
        }
        catch (VirtdException e)
        {
            _log.LogWarning("domain {Domain}: restart after exit not queued: {Detail}", d.Name, e.Detail);
        }
    }

    private static void CheckETag(DomainObject d, string? ifMatch)
    {
        if (string.IsNullOrEmpty(ifMatch) || ifMatch == "*") return;
        var current = d.View.ETag;
        foreach (var tag in ifMatch.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var t = tag.StartsWith("W/", StringComparison.Ordinal) ? tag[2..] : tag;
            if (t == current) return;
        }
        throw new VirtdException(ErrorCodes.EtagMismatch, 412, "Precondition failed",
            $"If-Match {ifMatch} does not match the current ETag {current} of domain '{d.Name}'; GET it again");
    }
}
