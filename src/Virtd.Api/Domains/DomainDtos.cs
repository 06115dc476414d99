using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
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

/// <summary>
/// A domain's body as <c>GET /domains/{id}</c> and the list answer it. While no job holds the domain it is serialised
/// once per view (a view is immutable and replaced on every change, so the bytes go with it and are collected with
/// it); while one does, for the read, as it carries the job's age.
/// </summary>
public sealed class DomainBodies : IResult
{
    private static readonly ConditionalWeakTable<DomainView, DomainBodies> Bodies = new();
    private static readonly JsonTypeInfo<DomainDto> Info = (JsonTypeInfo<DomainDto>)ApiJson.Options.GetTypeInfo(typeof(DomainDto));

    private DomainBodies(byte[] utf8) => Utf8 = utf8;

    internal byte[] Utf8 { get; }

    /// <summary>The body of <paramref name="d"/> at view <paramref name="v"/>; <paramref name="now"/> ages a holding job.</summary>
    public static DomainBodies Of(DomainObject d, DomainView v, DateTimeOffset now)
    {
        if (d.Gate.Holder().Holder is not null) return new DomainBodies(Serialize(DomainDto.From(d, v, now)));
        if (Bodies.TryGetValue(v, out var body)) return body;
        body = new DomainBodies(Serialize(DomainDto.From(d, v, default) with { CurrentJob = null }));
        return Bodies.GetValue(v, _ => body);
    }

    internal static byte[] Serialize(DomainDto dto) => JsonSerializer.SerializeToUtf8Bytes(dto, Info);

    public Task ExecuteAsync(HttpContext http)
    {
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = "application/json; charset=utf-8";
        http.Response.ContentLength = Utf8.Length;
        return http.Response.Body.WriteAsync(Utf8).AsTask();
    }
}

/// <summary>
/// A page of <c>GET /domains</c>, written as <see cref="DomainListDto"/> would be serialised: the envelope around the
/// items' bodies, with its Content-Length.
/// </summary>
public sealed class DomainListBody(List<byte[]> items, string? next) : IResult
{
    private static ReadOnlySpan<byte> Head => "{\"count\":"u8;
    private static ReadOnlySpan<byte> ItemsOpen => ",\"items\":["u8;
    private static ReadOnlySpan<byte> LastPageEnd => "]}"u8;
    private static ReadOnlySpan<byte> NextOpen => "],\"next\":\""u8;
    private static ReadOnlySpan<byte> NextEnd => "\"}"u8;

    public Task ExecuteAsync(HttpContext http)
    {
        Span<byte> count = stackalloc byte[11];
        items.Count.TryFormat(count, out var digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        var cursor = next is null ? default : JsonEncodedText.Encode(next, ApiJson.Options.Encoder).EncodedUtf8Bytes;
        long length = Head.Length + digits + ItemsOpen.Length + Math.Max(0, items.Count - 1)
                      + (next is null ? LastPageEnd.Length : NextOpen.Length + cursor.Length + NextEnd.Length);
        foreach (var item in items) length += item.Length;
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = "application/json; charset=utf-8";
        http.Response.ContentLength = length;
        var w = http.Response.BodyWriter;
        w.Write(Head);
        w.Write(count[..digits]);
        w.Write(ItemsOpen);
        for (var i = 0; i < items.Count; i++)
        {
            if (i > 0) w.Write(","u8);
            w.Write(items[i]);
        }
        if (next is null) w.Write(LastPageEnd);
        else
        {
            w.Write(NextOpen);
            w.Write(cursor);
            w.Write(NextEnd);
        }
        return w.FlushAsync().AsTask();
    }
}
