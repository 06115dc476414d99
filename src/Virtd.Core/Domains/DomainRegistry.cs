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
        }
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
