using Virtd.Api.Storage;
using Virtd.Api.Access;
using Virtd.Api.Consoles;
using Virtd.Api.Dashboard;
using Virtd.Api.Domains;
using Virtd.Api.Errors;
using Virtd.Api.Events;
using Virtd.Api.Host;
using Virtd.Api.Hosting;
using Virtd.Api.Jobs;
using Virtd.Api.Metrics;

StartupClock.Mark("main");
StartupGc.Begin();
StopSignals.Honour();
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.AddVirtdCore(args);
builder.AddQemuDriver();
builder.AddSimulatedDriver();
builder.AddIdleExit();
builder.AddSystemd();
builder.AddAccessControl();
builder.AddRequestLimits();
builder.AddObservability();
builder.Services.AddOpenApi("v1", o => o.AddDocumentTransformer((doc, _, _) =>
{
    doc.Info.Title = "virtd";
    doc.Info.Version = "v1";
    doc.Info.Contact = new Microsoft.OpenApi.OpenApiContact { Name = "virtd maintainers" };
    // Served, the document names the server it came from; generated at build time there is no request: the server is
    // then the one that serves the document (a relative URL), which is also what OpenAPI assumes when none is named.
    if (doc.Servers is not { Count: > 0 })
        doc.Servers = [new Microsoft.OpenApi.OpenApiServer { Url = "/", Description = "The daemon that serves this document (scripts/run: http://127.0.0.1:8470)" }];
    doc.Info.Description =
        "Manage QEMU virtual machines over REST. Actions are jobs: 202 + Location, or ?wait=N.\n\n" +
        "Access: over TCP every /api/v1 request needs `Authorization: Bearer <token>` (scheme `bearer`) or the dashboard's " +
        "session cookie (scheme `session`, from POST /api/v1/session); /healthz, /readyz and this document are anonymous. " +
        "On the host, the Unix sockets <RunDirectory>/virtd.sock (admin) and virtd-ro.sock (reader) need no token. Roles: " +
        "reader < operator < admin; each operation's role is the scope of its security requirement and its `x-virtd-role`. " +
        "401 `unauthenticated` (WWW-Authenticate: Bearer), 403 `forbidden` (names the role needed) or `csrf-rejected` (a " +
        "cookie-authenticated change not sent as application/json, or from another origin), 400 `host-not-allowed`, 429 " +
        "`rate-limited` after too many failed authentications from one address. Every change is written to the audit log " +
        "first; when it cannot be, 503 `audit-unavailable` and nothing changes.\n\n" +
        "Limits (configuration section `Limits`): more domains than `Limits:Domains` (4096) gets 409 `quota-exceeded`; a start that " +
        "would take the memory of running domains past `Limits:MemoryOvercommit` (1.5) × the host's RAM gets 409 " +
        "`insufficient-resources`; more than `Limits:EventStreams` (1000) open event streams, or `Limits:EventStreamsPerIdentity` " +
        "(100) of one caller, gets 429 `too-many-streams`; more than `Limits:RequestsPerSecond` requests in a second from one caller " +
        "(token, Unix peer, else address; 0, the default, is no limit; /healthz and /readyz never count) gets 429 `rate-limited` with " +
        "Retry-After. Lists come in pages: `?limit=` (default and most: `Limits:ListDefault`, 10000) and `?after=` with the `next` " +
        "of the previous page, which a `Link: <…>; rel=\"next\"` header also gives. Bodies over 1 MiB get 413; request headers are " +
        "limited to 64 and 32 KiB in all (Kestrel answers 431 without a body).";
    return Task.CompletedTask;
}).AddDocumentTransformer<AccessOpenApi>().AddOperationTransformer<AccessOpenApi>().AddOperationTransformer<IdempotencyOpenApi>()
    .AddDocumentTransformer<ProblemsOpenApi>().AddOperationTransformer<ProblemsOpenApi>().AddDocumentTransformer<EnumsOpenApi>().AddDocumentTransformer<Virtd.Api.Storage.CapacityOpenApi>()
    .AddOperationTransformer<LocationOpenApi>());

StartupClock.Mark("configured");
var app = builder.Build();
StartupClock.Mark("built");
app.UseIdleTracking();
app.UseVirtdProblems();
app.UseJsonCharset();
app.UseShutdownGate();
// Swagger UI's middleware matches paths with regexes: keep it off every other request's path. Anonymous: the
// page holds no data, and its Authorize button takes a bearer token for the calls it makes.
app.UseWhen(http => http.Request.Path.StartsWithSegments("/swagger"), swagger => swagger.UseSwaggerUI(o =>
{
    o.RoutePrefix = "swagger";
    o.SwaggerEndpoint("/openapi/v1.json", "virtd v1");
    o.EnablePersistAuthorization();
}));
app.UseDashboard();
// The WebSocket middleware sets a feature on every request it sees: only an upgrade request (a console) needs it.
app.UseWhen(http => http.Request.Headers.Upgrade.Count > 0, b => b.UseWebSockets());
app.UseAccessControl();
app.UseRequestRateLimit();
app.UseIdempotencyBodies();
app.MapOpenApi("/openapi/v1.json").AllowAnonymous(); // one document: any other name is a problem+json 404
app.MapHostApi();
app.MapMetricsApi();
app.MapDomainsApi();
app.MapConsolesApi();
app.MapJobsApi();
app.MapPoolsApi();
app.MapEventsApi();
app.MapTokensApi();
app.MapSessionApi();

StartupClock.Mark("mapped");
return await DaemonRunner.RunAsync(app);

/// <summary>Entry point type, for WebApplicationFactory.</summary>
public partial class Program;
