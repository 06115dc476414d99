using System.Net;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Virtd.Api.Hosting;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>/api/v1/host, health and readiness, the OpenAPI document and Swagger UI.</summary>
public sealed class HostApiTests
{
    [Fact]
    public async Task Host_DescribesTheMachineTheDaemonAndItsConfiguration()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?>
        {
            ["Jobs:Workers"] = "3",
            ["Jobs:PriorityWorkers"] = "1",
            ["Jobs:QueueLimit"] = "50",
            ["Jobs:PerDomainQueueLimit"] = "4",
            ["Jobs:WaitTimeout"] = "00:00:07",
        });
        using var http = app.CreateClient();

        var r = await http.GetAsync("/api/v1/host");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        var host = await r.ReadJsonAsync();
        Assert.False(string.IsNullOrEmpty(host.Str("hostname")));
        Assert.False(string.IsNullOrEmpty(host.Str("os")));
        Assert.Equal(Environment.ProcessorCount, host.GetProperty("cpus").GetInt32());
        Assert.True(host.GetProperty("memoryMiB").GetInt64() > 0);
        Assert.Equal("simulated", host.Str("defaultDriver"));
        var simulated = host.GetProperty("hypervisors").EnumerateArray().Single(h => h.Str("driver") == "simulated");
        Assert.True(simulated.GetProperty("available").GetBoolean());
        Assert.False(string.IsNullOrEmpty(simulated.Str("version")));
        var pool = Assert.Single(host.GetProperty("storagePools").EnumerateArray()).GetString();
        Assert.Equal(Virtd.Core.Domains.StoragePaths.TryRealPath(app.ImagesDirectory), pool);

        var daemon = host.GetProperty("daemon");
        Assert.Equal("ready", daemon.Str("state"));
        Assert.False(string.IsNullOrEmpty(daemon.Str("version")));
        Assert.Equal(Environment.ProcessId, daemon.GetProperty("pid").GetInt32());
        var started = daemon.GetProperty("startedAt").GetDateTimeOffset();
        Assert.InRange(daemon.GetProperty("readyAt").GetDateTimeOffset(), started, DateTimeOffset.UtcNow);
        Assert.True(daemon.GetProperty("uptimeSeconds").GetDouble() >= 0);

        var jobs = host.GetProperty("jobs");
        Assert.Equal(3, jobs.GetProperty("workers").GetInt32());
        Assert.Equal(1, jobs.GetProperty("priorityWorkers").GetInt32());
        Assert.Equal(50, jobs.GetProperty("queueLimit").GetInt32());
        Assert.Equal(4, jobs.GetProperty("perDomainQueueLimit").GetInt32());
        Assert.Equal(7, jobs.GetProperty("waitTimeoutSeconds").GetDouble());
        Assert.Equal(0, jobs.GetProperty("queued").GetInt32());
        Assert.Equal(0, jobs.GetProperty("running").GetInt32());

        var domains = host.GetProperty("domains");
        Assert.Equal(0, domains.GetProperty("defined").GetInt32());
        Assert.True(host.TryGetProperty("eventSubscribers", out _));
    }

    [Fact]
    public async Task Host_CountsDefinedRunningAndPausedDomains()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("a");
        await http.DefineRunningAsync("b");
        await http.ActAsync("b", "suspend", wait: 10);
        await http.DefineAsync(Definition("c"));

        var host = await (await http.GetAsync("/api/v1/host")).ReadJsonAsync();

        var domains = host.GetProperty("domains");
        Assert.Equal(3, domains.GetProperty("defined").GetInt32());
        Assert.Equal(1, domains.GetProperty("running").GetInt32());
        Assert.Equal(1, domains.GetProperty("paused").GetInt32());
        var simulated = host.GetProperty("hypervisors").EnumerateArray().Single(h => h.GetProperty("driver").GetString() == "simulated");
        Assert.Equal(2, simulated.GetProperty("runningVms").GetInt32());
    }

    [Fact]
    public async Task Host_ShowsQueuedAndRunningJobs()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        await http.StartHungAsync("hung");
        await http.ActAsync("hung", "shutdown");

        var jobs = (await (await http.GetAsync("/api/v1/host")).ReadJsonAsync()).GetProperty("jobs");

        Assert.Equal(1, jobs.GetProperty("running").GetInt32());
        Assert.Equal(1, jobs.GetProperty("queued").GetInt32());
    }

    [Fact]
    public async Task Healthz_Is200()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/healthz");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("ok", (await r.ReadJsonAsync()).Str("status"));
    }

    [Fact]
    public async Task Readyz_Is200OnceTheDaemonIsReady()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/readyz");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("ready", (await r.ReadJsonAsync()).Str("status"));
    }

    [Fact]
    public async Task WhileStopping_WritesAre503ShuttingDownWithRetryAfter_ReadsStillWork_AndReadyzIs503()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        // What shutdown phase 1 does first: the daemon is stopping from here on.
        app.Services.GetRequiredService<DaemonStatus>().SetStopping();

        var define = await http.PostJsonAsync("/api/v1/domains", Definition("late"));
        var start = await http.PostActionAsync("vm", "start");
        var delete = await http.DeleteAsync("/api/v1/domains/vm");
        var ready = await http.GetAsync("/readyz");

        foreach (var r in new[] { define, start, delete })
        {
            await r.AssertProblemAsync(HttpStatusCode.ServiceUnavailable, "shutting-down");
            Assert.True(r.Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1), $"Retry-After: {r.Headers.RetryAfter}");
        }
        await ready.AssertProblemAsync(HttpStatusCode.ServiceUnavailable, "shutting-down");
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
        Assert.Equal("shut-off", await http.StateOfAsync("vm"));
        Assert.Equal("stopping", (await (await http.GetAsync("/api/v1/host")).ReadJsonAsync()).GetProperty("daemon").Str("state"));
    }

    [Fact]
    public async Task OpenApi_ServesTheDocumentThatIsCommittedInTheRepository()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/openapi/v1.json");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        var served = await r.ReadJsonAsync();
        Assert.StartsWith("3.1", served.Str("openapi"));
        Assert.Equal("virtd", served.GetProperty("info").Str("title"));
        var paths = served.GetProperty("paths").EnumerateObject().Select(p => p.Name).ToHashSet();
        foreach (var path in new[]
                 {
                     "/api/v1/domains", "/api/v1/domains/{id}", "/api/v1/domains/{id}/gate", "/api/v1/domains/{id}/start",
                     "/api/v1/domains/{id}/shutdown", "/api/v1/domains/{id}/destroy", "/api/v1/jobs", "/api/v1/jobs/{jobId}",
                     "/api/v1/host", "/healthz", "/readyz",
                 })
            Assert.Contains(path, paths);

        using var committed = JsonDocument.Parse(await File.ReadAllTextAsync(CommittedOpenApiDocument()));
        Assert.Equal(
            Operations(committed.RootElement).Order(StringComparer.Ordinal),
            Operations(served).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task SwaggerUi_IsServedAndPointsAtTheOpenApiDocument()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var page = await http.GetAsync("/swagger/index.html");
        var script = await http.GetAsync("/swagger/index.js");

        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Contains("swagger-ui", await page.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, script.StatusCode);
        Assert.Contains("/openapi/v1.json", await script.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Swagger_WithoutAPage_RedirectsToTheUi()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateDefaultClient(); // does not follow redirects

        var r = await http.GetAsync("/swagger");

        Assert.True((int)r.StatusCode is >= 300 and < 400, $"GET /swagger: {(int)r.StatusCode}");
        Assert.EndsWith("swagger/index.html", r.Headers.Location?.OriginalString);
    }

    /// <summary>"METHOD path operationId" for every operation of an OpenAPI document.</summary>
    private static IEnumerable<string> Operations(JsonElement doc) =>
        doc.GetProperty("paths").EnumerateObject().SelectMany(path => path.Value.EnumerateObject()
            .Where(op => op.Value.ValueKind == JsonValueKind.Object && op.Value.TryGetProperty("responses", out _))
            .Select(op => $"{op.Name.ToUpperInvariant()} {path.Name} {op.Value.Str("operationId")}"));

    private static string CommittedOpenApiDocument()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "openapi", "virtd.v1.json");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException("openapi/virtd.v1.json not found above " + AppContext.BaseDirectory);
    }
}
