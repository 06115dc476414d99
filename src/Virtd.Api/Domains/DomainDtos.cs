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
/// A domain's body as <c>GET /domains/{id}</c> answers it while no job holds the domain, serialised once per view (a view
/// is immutable and replaced on every change, so the bytes go with it and are collected with it).
/// </summary>
public sealed class DomainBodies : IResult
{
    private static readonly ConditionalWeakTable<DomainView, DomainBodies> Bodies = new();
    private static readonly JsonTypeInfo<DomainDto> Info = (JsonTypeInfo<DomainDto>)ApiJson.Options.GetTypeInfo(typeof(DomainDto));

    private readonly byte[] _utf8;

    private DomainBodies(byte[] utf8) => _utf8 = utf8;

    /// <summary>The body of <paramref name="d"/> at view <paramref name="v"/>, with no current job.</summary>
    public static DomainBodies Of(DomainObject d, DomainView v)
    {
        if (Bodies.TryGetValue(v, out var body)) return body;
        body = new DomainBodies(JsonSerializer.SerializeToUtf8Bytes(DomainDto.From(d, v, default) with { CurrentJob = null }, Info));
        return Bodies.GetValue(v, _ => body);
    }

    /// <summary>The JSON of <paramref name="d"/> at view <paramref name="v"/>: the cached body, or one made now while a job holds it.</summary>
    public static byte[] Utf8Of(DomainObject d, DomainView v, DateTimeOffset now) =>
        d.Gate.Holder().Holder is null ? Of(d, v)._utf8 : JsonSerializer.SerializeToUtf8Bytes(DomainDto.From(d, v, now), Info);

    public Task ExecuteAsync(HttpContext http)
    {
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = "application/json; charset=utf-8";
        http.Response.ContentLength = _utf8.Length;
        return http.Response.Body.WriteAsync(_utf8).AsTask();
    }
}

/// <summary>
/// A page of <c>GET /domains</c> without stats, written as <see cref="DomainListDto"/> would be serialised: the envelope
/// around the items' bodies, with its Content-Length.
/// </summary>
public sealed class DomainListBody(List<byte[]> items, string? next) : IResult
{
    private static ReadOnlySpan<byte> CountName => "{\"count\":"u8;
    private static ReadOnlySpan<byte> ItemsName => ",\"items\":["u8;
    private static ReadOnlySpan<byte> NextName => "],\"next\":\""u8;

    public Task ExecuteAsync(HttpContext http)
    {
        Span<byte> count = stackalloc byte[11];
        items.Count.TryFormat(count, out var digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        var cursor = next is null ? default : JsonEncodedText.Encode(next, ApiJson.Options.Encoder).EncodedUtf8Bytes;
        long length = CountName.Length + digits + ItemsName.Length + Math.Max(0, items.Count - 1) + 2;
        foreach (var item in items) length += item.Length;
        if (next is not null) length += NextName.Length - 1 + cursor.Length + 1;
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = "application/json; charset=utf-8";
        http.Response.ContentLength = length;
        var w = http.Response.BodyWriter;
        w.Write(CountName);
        w.Write(count[..digits]);
        w.Write(ItemsName);
        for (var i = 0; i < items.Count; i++)
        {
            if (i > 0) w.Write(","u8);
            w.Write(items[i]);
        }
        if (next is null) w.Write("]}"u8);
        else
        {
            w.Write(NextName);
            w.Write(cursor);
            w.Write("\"}"u8);
        }
        return w.FlushAsync().AsTask();
    }
}
