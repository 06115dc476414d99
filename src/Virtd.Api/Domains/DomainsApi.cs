using Virtd.Api.Access;
using Virtd.Api.Hosting;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Virtd.Api.Errors;
using Virtd.Api.Jobs;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;
using Virtd.Core.Observability;

namespace Virtd.Api.Domains;

public static class DomainsApi
{
    public static IEndpointRouteBuilder MapDomainsApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/domains").WithTags("Domains");

        // The reads dashboards poll resolve nothing per request: the daemon's singletons are taken from the root provider
        // once, so no request scope is made for them.
        var root = app.ServiceProvider;
        DomainService? domains = null;
        TimeProvider? clock = null;
        LimitsOptions? limits = null;
        DomainStatsCollector? collector = null;
        g.MapGet("", (string? state, string? driver, int? limit, string? after, string? include, HttpContext http) =>
                ListDomains(state, driver, limit, after, include, http, domains ??= root.GetRequiredService<DomainService>(),
                    limits ??= root.GetRequiredService<LimitsOptions>(), clock ??= root.GetRequiredService<TimeProvider>(),
                    collector ??= root.GetRequiredService<DomainStatsCollector>()))
            .WithName("ListDomains")
            .WithSummary("List domains by name, optionally by state and driver; in pages of ?limit= (default and most: Limits:ListDefault), the next from ?after=<next>")
            .WithDescription("A longer list ends the page with `next` in the body and a `Link: <…>; rel=\"next\"` header that asks for the rest.")
            .Produces<DomainListDto>().Requires(Role.Reader).ProducesValidationProblem();
        // ?include=stats adds each running VM's figures (GET /{id}/stats) to the list.
        g.MapPost("", DefineDomainAsync).WithName("DefineDomain").WithSummary("Define a persistent domain")
            .Requires(Role.Admin).Idempotent().Audited(201).Problems(400, 409, 413, 415, 503, 507);
        g.MapGet("/{id}", (string id, HttpContext http) => GetDomain(id, http, domains ??= root.GetRequiredService<DomainService>(), clock ??= root.GetRequiredService<TimeProvider>()))
            .WithName("GetDomain").WithSummary("A domain's definition and runtime state (id = name or UUID)")
            .Produces<DomainDto>().Requires(Role.Reader).Problems(404);
        g.MapPut("/{id}", UpdateDomainAsync).WithName("UpdateDomain")
            .WithSummary("Replace a definition; If-Match honoured; a running domain takes it at next start")
            .Requires(Role.Admin).Audited(200).Problems(400, 404, 409, 412, 413, 415, 503, 507);
        g.MapDelete("/{id}", UndefineDomainAsync).WithName("UndefineDomain").WithSummary("Undefine a domain (409 while active)")
            .Requires(Role.Admin).Audited(204).Problems(404, 409, 412, 503);
        g.MapGet("/{id}/stats", GetStats).WithName("GetDomainStats")
            .WithSummary("A running domain's figures as last read in the background: vCPU time, QEMU's RSS, balloon, block I/O per disk, and when they were read")
            .WithDescription("Never waits on the VM: a VM that did not answer its last read keeps its last figures with `stale: true`. " +
                             "A domain that runs no VM has no figures.")
            .Requires(Role.Reader).Problems(404);
        g.MapGet("/{id}/gate", GetGate).WithName("GetDomainGate").WithSummary("Who holds the domain's job gate, since when, and what is queued")
            .Requires(Role.Reader).Problems(404);

        Action<StartCommand>(g, "start", "Start the domain");
        g.MapPost("/{id}/shutdown", ShutdownAsync).WithName("ShutdownDomain").ActionMetadata("ACPI power button; waits up to timeout, then fails or (force) destroys");
        Action<RebootCommand>(g, "reboot", "ACPI reboot, honouring onReboot");
        Action<ResetCommand>(g, "reset", "Hard reset");
        Action<SuspendCommand>(g, "suspend", "Pause the domain's CPUs");
        Action<ResumeCommand>(g, "resume", "Resume a paused domain");
        g.MapPost("/{id}/destroy", DestroyAsync).WithName("DestroyDomain").ActionMetadata("SIGTERM, wait timeout, SIGKILL unless graceful; a priority job");
        return app;
    }

    /// <summary>An action without a body: the route names its command.</summary>
    private static void Action<TCommand>(RouteGroupBuilder g, string name, string summary) where TCommand : JobCommand, new() =>
        g.MapPost("/{id}/" + name, (string id, int? wait, HttpContext http, DomainService svc, DaemonStatus life, CancellationToken ct) =>
                SubmitAsync(id, new TCommand(), wait, http, svc, life, ct))
            .WithName(char.ToUpperInvariant(name[0]) + name[1..] + "Domain").ActionMetadata(summary);

    private static RouteHandlerBuilder ActionMetadata(this RouteHandlerBuilder b, string summary) =>
        b.WithSummary(summary + ". Answers 202 with the queued job; with ?wait=N (≤ 300 s) waits and answers 200 once it has finished.")
            .Requires(Role.Operator).Idempotent().Audited(202).Problems(400, 404, 409, 413, 429, 503, 507);

    internal static RouteHandlerBuilder Problems(this RouteHandlerBuilder b, params int[] statuses)
    {
        foreach (var s in statuses) b.ProducesProblem(s);
        return b;
    }

    /// <summary>
    /// A page of domains, written around its items' bodies (<see cref="DomainListBody"/>). Without stats they are the bodies
    /// single reads serve (<see cref="DomainBodies"/>, cached per view), so a dashboard polling the list makes no objects per
    /// domain; with stats each item is serialised for the read.
    /// </summary>
    public static DomainListBody ListDomains(string? state, string? driver, int? limit, string? after, string? include, HttpContext http,
        DomainService svc, LimitsOptions limits, TimeProvider time, DomainStatsCollector collector)
    {
        var withStats = include switch
        {
            null or "" => false,
            "stats" => true,
            _ => throw VirtdException.Validation("include", $"unknown value '{include}'; expected: stats"),
        };
        var stateFilter = EnumText.ParseQuery<DomainState>("state", state);
        var driverFilter = EnumText.ParseQuery<DriverKind>("driver", driver);
        var take = Paging.Limit(limit, limits);
        var from = Paging.Position("domains", after);
        var list = svc.Registry.Sorted();
        var start = 0;
        if (from is not null)
        {
            // The first name after the cursor's (names are unique; the cursor's domain may be gone by now).
            int lo = 0, hi = list.Length;
            while (lo < hi)
            {
                var mid = (lo + hi) >>> 1;
                if (string.CompareOrdinal(list[mid].Name, from) <= 0) lo = mid + 1; else hi = mid;
            }
            start = lo;
        }
        var bodies = new List<byte[]>(Math.Min(take, list.Length - start));
        var now = time.GetUtcNow();
        string? next = null;
        string? last = null;
        for (var i = start; i < list.Length; i++)
        {
            var d = list[i];
            if (!d.Visible) continue;
            var v = d.View;
            if (stateFilter is { } s && v.Runtime.State != s) continue;
            if (driverFilter is { } k && (v.Definition.Driver ?? DriverKind.Simulated) != k) continue;
            if (bodies.Count == take)
            {
                next = Paging.Cursor("domains", last!);
                Paging.Link(http, next);
                break;
            }
            bodies.Add(withStats
                ? DomainBodies.Serialize(DomainDto.From(d, v, now) with { Stats = DomainStatsDto.From(d, v, collector.Find(d.Uuid)) })
                : DomainBodies.Of(d, v, now).Utf8);
            last = d.Name;
        }
        return new DomainListBody(bodies, next);
    }

    public static Ok<DomainStatsDto> GetStats(string id, DomainService svc, DomainStatsCollector collector)
    {
        var d = svc.Get(id);
        return TypedResults.Ok(DomainStatsDto.From(d, d.View, collector.Find(d.Uuid)));
    }

    /// <summary>
    /// The read that dashboards and scripts poll: while no job holds the domain, its body is a function of the view alone,
    /// serialised once per change (<see cref="DomainBodies"/>) and written with its length; a held domain's body carries
    /// the job's age, so it is serialised for the read.
    /// </summary>
    public static DomainBodies GetDomain(string id, HttpContext http, DomainService svc, TimeProvider time)
    {
        var d = svc.Get(id);
        var v = d.View;
        http.Response.Headers.ETag = v.ETag;
        return DomainBodies.Of(d, v, time.GetUtcNow());
    }

    public static async Task<Created<DomainDto>> DefineDomainAsync(DomainDefinition definition, HttpContext http, DomainService svc, TimeProvider time, CancellationToken ct)
    {
        var d = await svc.DefineAsync(definition, ct, Audit.Of(http).Before).ConfigureAwait(false);
        var v = d.View;
        http.Response.Headers.ETag = v.ETag;
        return TypedResults.Created($"/api/v1/domains/{Uri.EscapeDataString(d.Name)}", DomainDto.From(d, v, time.GetUtcNow()));
    }

    public static async Task<Ok<DomainDto>> UpdateDomainAsync(string id, DomainDefinition definition, [FromHeader(Name = "If-Match")] string? ifMatch,
        HttpContext http, DomainService svc, TimeProvider time, CancellationToken ct)
    {
        var d = await svc.UpdateAsync(id, definition, ifMatch, ct, Audit.Of(http).Before).ConfigureAwait(false);
        var v = d.View;
        http.Response.Headers.ETag = v.ETag;
        return TypedResults.Ok(DomainDto.From(d, v, time.GetUtcNow()));
    }

    public static async Task<NoContent> UndefineDomainAsync(string id, [FromHeader(Name = "If-Match")] string? ifMatch, HttpContext http,
        DomainService svc, CancellationToken ct)
    {
        await svc.UndefineAsync(id, ifMatch, ct, Audit.Of(http).Before).ConfigureAwait(false);
        return TypedResults.NoContent();
    }

    public static Ok<GateDto> GetGate(string id, DomainService svc, TimeProvider time)
    {
        var d = svc.Get(id);
        var g = d.Gate.Snapshot();
        var now = time.GetUtcNow();
        return TypedResults.Ok(new GateDto(d.Name,
            g.Holder is { } h ? GateJobDto.From(h, g.HeldSince!.Value, now) : null,
            g.Queued.Select(j => GateJobDto.From(j, j.CreatedAt, now)).ToList()));
    }

    /// <summary>The body binds to the command itself: <c>{"timeout": 60, "force": false}</c>, or none for the defaults.</summary>
    public static Task<Results<Ok<JobDto>, Accepted<JobDto>>> ShutdownAsync(string id,
        [FromBody(EmptyBodyBehavior = Microsoft.AspNetCore.Mvc.ModelBinding.EmptyBodyBehavior.Allow)] ShutdownCommand? body,
        int? wait, HttpContext http, DomainService svc, DaemonStatus life, CancellationToken ct) =>
        SubmitAsync(id, body ?? new ShutdownCommand(), wait, http, svc, life, ct);

    /// <summary>The body binds to the command itself: <c>{"graceful": false, "timeout": 10}</c>, or none for the defaults.</summary>
    public static Task<Results<Ok<JobDto>, Accepted<JobDto>>> DestroyAsync(string id,
        [FromBody(EmptyBodyBehavior = Microsoft.AspNetCore.Mvc.ModelBinding.EmptyBodyBehavior.Allow)] DestroyCommand? body,
        int? wait, HttpContext http, DomainService svc, DaemonStatus life, CancellationToken ct) =>
        SubmitAsync(id, body ?? new DestroyCommand(), wait, http, svc, life, ct);

    /// <summary>Every action: check the request's own values, then look up, check the state, queue, answer (or wait).</summary>
    private static async Task<Results<Ok<JobDto>, Accepted<JobDto>>> SubmitAsync(string id, JobCommand command, int? wait,
        HttpContext http, DomainService svc, DaemonStatus life, CancellationToken ct)
    {
        JobsApi.CheckWait(wait);
        command.Validate();
        var job = await svc.SubmitAsync(id, command, Audit.Of(http).Before, Idempotency.Of(http)).ConfigureAwait(false);
        return await JobsApi.RespondAsync(job, wait, http, life, ct).ConfigureAwait(false);
    }
}
