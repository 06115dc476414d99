namespace Virtd.Core.Domains;

/// <summary>
/// Name and UUID → domain. One plain lock, held only for dictionary work: never I/O, never an
/// await, never another lock (seed 002). Everything else happens under a domain's own gate.
/// </summary>
public sealed class DomainRegistry
{
    private readonly object _lock = new();
    private readonly Dictionary<string, DomainObject> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<Guid, DomainObject> _byUuid = [];
    // Every slot sorted by name, for lists; null once a slot is added or removed. _version counts those changes.
    private DomainObject[]? _sorted;
    private long _version;

    /// <summary>Looks up by name, then by UUID. Reserved-but-uncommitted domains are not found.</summary>
    public DomainObject? Find(string id)
    {
        DomainObject? d;
        lock (_lock)
        {
            if (!_byName.TryGetValue(id, out d) && Guid.TryParse(id, out var uuid)) _byUuid.TryGetValue(uuid, out d);
        }
        return d is { Visible: true } ? d : null;
    }

    /// <summary>
    /// Reserves the name and UUID slots for a new domain. On a clash returns false and the domain
    /// that holds the slot (possibly a reservation still in progress).
    /// </summary>
    /// <param name="limit">At most this many domains (reservations included): false, with no conflict, when full.</param>
    public bool TryReserve(DomainObject domain, out DomainObject? conflict, int limit = int.MaxValue)
    {
        lock (_lock)
        {
            if (_byName.TryGetValue(domain.Name, out conflict) || _byUuid.TryGetValue(domain.Uuid, out conflict)) return false;
            if (_byName.Count >= limit) return false;
            _byName.Add(domain.Name, domain);
            _byUuid.Add(domain.Uuid, domain);
            _sorted = null;
            _version++;
            return true;
        }
    }

    /// <summary>Makes a reserved domain visible to reads.</summary>
    public static void Commit(DomainObject domain) => domain.Visible = true;

    public void Remove(DomainObject domain)
    {
        domain.Visible = false;
        domain.Removed = true;
        lock (_lock)
        {
            if (_byName.TryGetValue(domain.Name, out var d) && ReferenceEquals(d, domain)) _byName.Remove(domain.Name);
            if (_byUuid.TryGetValue(domain.Uuid, out d) && ReferenceEquals(d, domain)) _byUuid.Remove(domain.Uuid);
            _sorted = null;
            _version++;
        }
    }

    /// <summary>
    /// Every slot, reservations and removed domains included (check <see cref="DomainObject.Visible"/>), by name in
    /// ordinal order. Shared and never changed: the list pages walk it without copying. It is made again after a define
    /// or an undefine, sorted outside the lock.
    /// </summary>
    public DomainObject[] Sorted()
    {
        DomainObject[] all;
        long version;
        lock (_lock)
        {
            if (_sorted is { } cached) return cached;
            all = new DomainObject[_byName.Count];
            _byName.Values.CopyTo(all, 0);
            version = _version;
        }
        Array.Sort(all, static (a, b) => string.CompareOrdinal(a.Name, b.Name));
        lock (_lock)
        {
            if (_version == version) _sorted = all;
        }
        return all;
    }

    /// <summary>Copies out the visible domains; sorting and filtering happen outside the lock.</summary>
    public List<DomainObject> List()
    {
        DomainObject[] all;
        lock (_lock)
        {
            all = new DomainObject[_byName.Count];
            _byName.Values.CopyTo(all, 0);
        }
        var result = new List<DomainObject>(all.Length);
        foreach (var d in all) if (d.Visible) result.Add(d);
        return result;
    }

    public int Count
    {
        get { lock (_lock) return _byName.Count; }
    }
}
