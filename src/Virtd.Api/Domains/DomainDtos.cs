using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Api.Domains;

/// <summary>A domain: runtime state plus its definition (what <c>PUT</c> takes back).</summary>
public sealed record DomainDto(
    string Name,
    Guid Uuid,
    DriverKind Driver,
    DomainState State,
    string Reason,
    DateTimeOffset StateChangedAt,
    DateTimeOffset? StartedAt,
    int? Pid,
    bool PendingChanges,
    GateJobDto? CurrentJob,
    DomainDefinition Definition,
    DomainDefinition? LiveDefinition)
{
    /// <summary>The VM's figures, with <c>?include=stats</c> on the list.</summary>
    public DomainStatsDto? Stats { get; init; }

    public static DomainDto From(DomainObject d, DomainView v, DateTimeOffset now)
    {
        var (holder, since) = d.Gate.Holder();
        var pending = v.PendingChanges;
        var r = v.Runtime;
        return new DomainDto(d.Name, d.Uuid, v.Definition.Driver ?? DriverKind.Simulated, r.State, r.Reason, r.ChangedAt, r.StartedAt, r.Pid,
            pending, holder is not null ? GateJobDto.From(holder, since, now) : null,
            v.Definition, pending ? v.Live : null);
    }
}

/// <summary>A page of domains; <c>next</c> (absent on the last page) is the cursor for <c>?after=</c>.</summary>
public sealed record DomainListDto(int Count, IReadOnlyList<DomainDto> Items, string? Next = null);

/// <summary>A job as seen from a gate: the holder (since when) or a queued one (since it was queued).</summary>
public sealed record GateJobDto(Guid Id, JobKind Kind, JobState State, DateTimeOffset Since, double AgeSeconds)
{
    public static GateJobDto From(GateTicket j, DateTimeOffset since, DateTimeOffset now) =>
        new(j.Id, j.Kind, j.State, since, Math.Round((now - since).TotalSeconds, 3));
}

/// <summary><c>GET /domains/{id}/gate</c>: who holds the domain's job gate and what waits.</summary>
public sealed record GateDto(string Domain, GateJobDto? Holder, IReadOnlyList<GateJobDto> Queued);

/// <summary>
/// <c>GET /domains/{id}/stats</c>: a VM's figures as last read in the background (never read on request), and when.
/// A domain that runs no VM has none; <c>stale</c> says the last read failed or has not answered (a hung QEMU).
/// </summary>
public sealed record DomainStatsDto(
    string Domain,
    Guid Uuid,
    DomainState State,
    DateTimeOffset? ReadAt,
    bool Stale,
    double? VcpuSeconds,
    long? RssBytes,
    long? BalloonActualBytes,
    IReadOnlyList<Virtd.Core.Drivers.DiskStats> Disks)
{
    public static DomainStatsDto From(DomainObject d, DomainView v, Virtd.Core.Observability.DomainStatsReading? r) =>
        new(d.Name, d.Uuid, v.Runtime.State, r?.ReadAt, r?.Stale ?? false, r?.Stats?.VcpuSeconds, r?.Stats?.RssBytes, r?.Stats?.BalloonActualBytes,
            r?.Stats?.Disks ?? []);
}
