using System.Globalization;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Mvc;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Api.Hosting;
using Virtd.Core.Events;

namespace Virtd.Api.Events;

public static class EventsApi
{
    public const string ContentType = "text/event-stream";

    public static IEndpointRouteBuilder MapEventsApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/events").WithTags("Events");
        g.MapGet("", StreamEventsAsync).WithName("StreamEvents")
            .WithSummary("Live events as Server-Sent Events; filters domain (repeatable, name or UUID) and types (comma list of prefixes); resumes after Last-Event-ID")
            .WithDescription(
                "Each event is a frame `id:` (increasing, also across daemon restarts), `event:` (the type) and `data:` (one line of JSON: " +
                "`id`, `type`, `time`, then the payload: `domain`, `domainUuid`, `event`, `state`, `reason` for domain.*; `jobId`, `kind`, " +
                "`state`, `domain`, `domainUuid`, `errorCode` for job.*; `state` for daemon.state). Types: domain.defined, domain.updated, " +
                "domain.undefined, domain.lifecycle, job.queued, job.started, job.finished, daemon.state, and resync: the client missed " +
                "events (Last-Event-ID older than the replay buffer, or it read too slowly and is cut off) and must re-list, then resume " +
                "from the resync's id. A frame with only `id:` moves the resume point; `:` lines are heartbeats. The Last-Event-ID header " +
                "wins over ?lastEventId=.")
            .Produces(StatusCodes.Status200OK, typeof(string), ContentType)
            .Requires(Role.Reader).Problems(400, 429, 503);
        return app;
    }

    /// <summary>Validates the query, subscribes (with replay) and streams until the client goes, the daemon stops or the client overflows.</summary>
    public static async Task StreamEventsAsync(
        HttpContext http,
        EventBus bus,
        EventsOptions options,
        IHostApplicationLifetime life,
        DaemonStatus status,
        StreamLimits limits,
        TimeProvider time,
        ILoggerFactory logs,
        CancellationToken ct,
        // Defaults, so that the request delegate generator too describes them as optional.
        [FromQuery] string[]? domain = null,
        [FromQuery] string[]? types = null,
        [FromQuery] string? lastEventId = null,
        [FromHeader(Name = "Last-Event-ID")] string? lastEventIdHeader = null)
    {
        var errors = new Dictionary<string, string[]>();
        var filter = new EventFilter(Domains(domain, errors), Split(types));
        // A reconnecting EventSource sends the header; the URL may still carry the id it first connected with.
        var after = !string.IsNullOrWhiteSpace(lastEventIdHeader)
            ? ParseId("the Last-Event-ID header", lastEventIdHeader, errors)
            : !string.IsNullOrWhiteSpace(lastEventId) ? ParseId("lastEventId", lastEventId, errors) : null;
        if (errors.Count > 0) throw VirtdException.Validation(errors);
        if (life.ApplicationStopping.IsCancellationRequested) throw VirtdException.ShuttingDown();
        // The stream ends when the daemon closes the bus (after the last events of shutdown phase 1) or, for a
        // client that does not read them, at the latest when the host stops waiting for requests.

        using var slot = limits.Acquire(RequestLimits.Partition(http));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct, status.StreamsEnd);
        using var sub = bus.Subscribe(filter, after);
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = ContentType;
        http.Response.Headers.CacheControl = "no-cache";
        http.Response.Headers["X-Accel-Buffering"] = "no"; // nginx: pass each event on at once
        http.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        var stream = new EventStream(http, bus, sub, TimeSpan.FromSeconds(options.HeartbeatSeconds), time, logs.CreateLogger("Virtd.Api.Events"));
        await stream.RunAsync(stop.Token).ConfigureAwait(false);
    }

    /// <summary>Names and UUIDs, repeatable and comma-separated. A name that no domain has yet is still a filter: it may be defined later.</summary>
    private static List<string> Domains(string[]? values, Dictionary<string, string[]> errors)
    {
        var result = new List<string>();
        var bad = new List<string>();
        foreach (var d in Split(values))
        {
            if (Guid.TryParse(d, out _) || DomainDefinitionValidator.IsNameForm(d)) result.Add(d);
            else bad.Add($"'{d}' is neither a domain name ({DomainDefinitionValidator.NamePattern}) nor a UUID");
        }
        if (values is not null && values.Length > 0 && result.Count == 0 && bad.Count == 0) bad.Add("must not be empty");
        if (bad.Count > 0) errors["domain"] = [.. bad];
        return result;
    }

    private static List<string> Split(string[]? values) =>
        values is null ? [] : values.SelectMany(v => (v ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)).ToList();

    /// <summary>Errors are keyed <c>lastEventId</c> whichever way the id came; the message says which.</summary>
    private static long? ParseId(string source, string text, Dictionary<string, string[]> errors)
    {
        if (long.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var id)) return id;
        errors["lastEventId"] = [$"{source}: '{text}' is not an event id (a non-negative whole number)"];
        return null;
    }
}
