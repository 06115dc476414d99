using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using Virtd.Api.Tests.Access;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>GET /metrics, GET /domains/{id}/stats and ?include=stats, on the simulated driver.</summary>
[Collection(MetricsCollection.Name)]
public sealed class MetricsTests
{
    private static readonly Dictionary<string, string?> FastStats = new()
    {
        ["Metrics:StatsInterval"] = "00:00:00.100",
        ["Metrics:StatsTimeout"] = "00:00:00.500",
        ["Simulated:MonitorTimeout"] = "00:00:30",
    };

    private static async Task<List<PrometheusSample>> ScrapeAsync(HttpClient http)
    {
        var r = await http.GetAsync("/metrics");
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"/metrics: {(int)r.StatusCode} {body}");
        Assert.Equal("text/plain", r.Content.Headers.ContentType?.MediaType);
        return PrometheusText.Parse(body);
    }

    private static async Task<List<PrometheusSample>> ScrapeUntilAsync(HttpClient http, Func<List<PrometheusSample>, bool> done, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (true)
        {
            var samples = await ScrapeAsync(http);
            if (done(samples)) return samples;
            if (DateTime.UtcNow > deadline) Assert.Fail($"no scrape showed {what} within {Patience}");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task Scrape_AfterAStart_CountsTheJobAndShowsTheDomainRunningWithItsFigures()
    {
        await using var app = new VirtdApplication(settings: FastStats);
        using var admin = app.CreateClient();
        var d = await admin.DefineRunningAsync("web");
        var uuid = d.Str("uuid")!;
        using var reader = app.CreateClient(await TokenTests.CreateTokenAsync(admin, "prometheus", "reader"));

        var samples = await ScrapeUntilAsync(reader, s => s.Value("virtd_domain_vcpu_time_seconds_total", ("domain", "web")) is > 0, "the VM's vCPU time");

        Assert.Equal(1, samples.Value("virtd_jobs_accepted_total", ("kind", "start")));
        Assert.Equal(1, samples.Value("virtd_jobs_finished_total", ("kind", "start"), ("outcome", "succeeded")));
        Assert.Equal(1, samples.Value("virtd_job_duration_seconds_count", ("kind", "start")));
        Assert.Equal(1, samples.Value("virtd_domain_state", ("domain", "web"), ("uuid", uuid), ("state", "running")));
        Assert.Equal(0, samples.Value("virtd_domain_state", ("domain", "web"), ("uuid", uuid), ("state", "shut-off")));
        Assert.Equal(1, samples.Value("virtd_domains", ("driver", "simulated"), ("state", "running")));
        Assert.Equal(0, samples.Value("virtd_domain_stats_stale", ("domain", "web"), ("uuid", uuid)));
        Assert.Equal(64 * 1024 * 1024, samples.Value("virtd_domain_balloon_actual_bytes", ("domain", "web")));
        Assert.Equal(8, samples.Value("virtd_workers_limit", ("lane", "normal")));
        Assert.NotNull(samples.Value("virtd_jobs_queued"));
        Assert.NotNull(samples.Value("virtd_workers_busy", ("lane", "priority")));
        Assert.Contains(samples, s => s.Name == "dotnet_gc_collections_total"); // the runtime's meters
        // ASP.NET Core's per-request meter costs every request its recording: only with Metrics:AspNetCore=true.
        Assert.DoesNotContain(samples, s => s.Name.StartsWith("http_server_", StringComparison.Ordinal));
    }

    [Fact]
    public async Task DomainSeries_BoundsThePerVmSeries_TheRestAreSummedInAnOverflowSeries()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Metrics:DomainSeries"] = "16" });
        using var admin = app.CreateClient();
        for (var i = 0; i < 20; i++) await admin.DefineAsync(new { name = $"vm-{i:00}", memoryMiB = 64 });

        var samples = await ScrapeAsync(admin);

        var states = samples.Where(s => s.Name == "virtd_domain_state").ToList();
        var named = states.Select(s => s.Labels.GetValueOrDefault("domain")).OfType<string>().Distinct().Count();
        Assert.InRange(named, 14, 16);
        Assert.Contains(states, s => s.Labels.GetValueOrDefault("otel_metric_overflow") == "true");
        // Daemon-wide figures are whole: 20 domains shut off.
        Assert.Equal(20, samples.Value("virtd_domains", ("driver", "simulated"), ("state", "shut-off")));
    }

    [Fact]
    public async Task Scrape_WithoutCredentials_Is401_UnlessAnonymousScrapesAreAllowedFromLoopback()
    {
        await using (var closed = new VirtdApplication(kestrel: true))
        {
            using var anonymous = new HttpClient { BaseAddress = closed.StartKestrel() };
            var r = await anonymous.GetAsync("/metrics");
            await r.AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
        }
        await using var open = new VirtdApplication(kestrel: true, settings: new Dictionary<string, string?> { ["Metrics:Anonymous"] = "true" });
        using var client = new HttpClient { BaseAddress = open.StartKestrel() };
        Assert.Contains(await ScrapeAsync(client), s => s.Name == "virtd_jobs_queued");
        // Anonymous scrapes open /metrics only; a wrong token is still refused.
        Assert.Equal(HttpStatusCode.Unauthorized, (await client.GetAsync("/api/v1/host")).StatusCode);
        using var wrong = new HttpRequestMessage(HttpMethod.Get, "/metrics") { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", "virtd_wrong") } };
        Assert.Equal(HttpStatusCode.Unauthorized, (await client.SendAsync(wrong)).StatusCode);
    }

    [Fact]
    public async Task Scrape_AskingForOpenMetrics_GetsOpenMetrics()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        using var request = new HttpRequestMessage(HttpMethod.Get, "/metrics");
        request.Headers.Accept.ParseAdd("application/openmetrics-text; version=1.0.0");
        var r = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/openmetrics-text", r.Content.Headers.ContentType?.MediaType);
        Assert.EndsWith("# EOF\n", await r.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Scrape_WithABodyOverTheLimit_Is413_NotAResetConnection()
    {
        await using var app = new VirtdApplication(kestrel: true);
        using var http = new HttpClient { BaseAddress = app.StartKestrel() };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", app.AdminToken);
        using var big = new HttpRequestMessage(HttpMethod.Get, "/metrics") { Content = new StreamContent(new MemoryStream(new byte[2 * 1024 * 1024])) };
        big.Headers.TransferEncodingChunked = true;
        await (await http.SendAsync(big)).AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");
        using var small = new HttpRequestMessage(HttpMethod.Get, "/metrics") { Content = new ByteArrayContent(new byte[100]) };
        Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(small)).StatusCode);
    }

    [Fact]
    public async Task Scrape_WithAspNetCoresRequestMeter_HasRequestDurationsByRoute()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Metrics:AspNetCore"] = "true" });
        using var http = app.CreateClient();
        await http.DefineRunningAsync("lean");
        var samples = await ScrapeAsync(http);
        Assert.Equal(1, samples.Value("virtd_jobs_finished_total", ("kind", "start"), ("outcome", "succeeded")));
        Assert.Contains(samples, s => s.Name == "http_server_request_duration_seconds_count"
            && s.Labels.GetValueOrDefault("http_route") == "/api/v1/domains/{id}/start" && s.Labels.GetValueOrDefault("http_response_status_code") is "200" or "202");
    }

    [Fact]
    public async Task Scrape_AfterTheVmIsDestroyedAndUndefined_HasNoSeriesOfIt()
    {
        await using var app = new VirtdApplication(settings: FastStats);
        using var http = app.CreateClient();
        await http.DefineRunningAsync("gone");
        await ScrapeUntilAsync(http, s => s.Value("virtd_domain_vcpu_time_seconds_total", ("domain", "gone")) is > 0, "the VM's vCPU time");

        await http.ActAsync("gone", "destroy", wait: 30);
        // A stopped VM has no figures: its per-VM series go (virtd_domain_state stays while it is defined).
        var stopped = await ScrapeUntilAsync(http, s => !s.Any(x => x.Name.StartsWith("virtd_domain_", StringComparison.Ordinal)
            && x.Name != "virtd_domain_state" && x.Labels.GetValueOrDefault("domain") == "gone"), "no per-VM series of the stopped VM");
        Assert.Equal(1, stopped.Value("virtd_domain_state", ("domain", "gone"), ("state", "shut-off")));

        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/gone")).StatusCode);
        await ScrapeUntilAsync(http, s => !s.Any(x => x.Labels.GetValueOrDefault("domain") == "gone"), "no series of the undefined domain");
    }

    [Fact]
    public async Task Scrape_WhenMetricsAreOff_Is404()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Metrics:Enabled"] = "false" });
        using var http = app.CreateClient();
        await (await http.GetAsync("/metrics")).AssertProblemAsync(HttpStatusCode.NotFound, "not-found");
    }

    [Fact]
    public async Task Scrape_With50RunningVmsOneHung_NeverWaitsForIt_AndMarksItStale()
    {
        // The hung VM's read takes the whole StatsTimeout (5 s) each time: a scrape that waited for it would take that long.
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?>(FastStats) { ["Metrics:StatsTimeout"] = "00:00:05" });
        using var http = app.CreateClient();
        await Task.WhenAll(Enumerable.Range(0, 49).Select(i => http.DefineRunningAsync($"vm{i:00}")));
        await http.DefineRunningAsync("hung", simulation: new { hangMonitor = true });

        var samples = await ScrapeUntilAsync(http, s => s.Value("virtd_domain_stats_stale", ("domain", "hung")) == 1
            && s.Count(x => x.Name == "virtd_domain_vcpu_time_seconds_total") == 49, "49 VMs read and the hung one stale");
        Assert.Null(samples.Value("virtd_domain_vcpu_time_seconds_total", ("domain", "hung"))); // never read: no figure rather than a made-up one
        for (var i = 0; i < 5; i++) await ScrapeAsync(http); // warm up
        var times = new List<double>();
        for (var i = 0; i < 21; i++)
        {
            var sw = Stopwatch.StartNew();
            await ScrapeAsync(http);
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        // On a quiet machine a scrape takes a few ms (scripts/bench/api measures its p99 against the 50 ms goal); this
        // machine is shared, so the test holds what it must: no scrape comes near the 5 s a read of the hung VM takes.
        Assert.True(times[^1] < 1000, $"a scrape waited; scrape times (ms): {string.Join(", ", times.Select(t => t.ToString("0.0")))}");
        Console.WriteLine($"scrape of 50 VMs, one hung: median {times[10]:0.0} ms, max {times[^1]:0.0} ms");
    }

    [Fact]
    public async Task Stats_OfARunningDomain_AreItsLastReading_WithTheTimeTheyWereRead()
    {
        await using var app = new VirtdApplication(settings: FastStats);
        using var http = app.CreateClient();
        var before = DateTimeOffset.UtcNow;
        await http.DefineRunningAsync("db");
        await http.DefineAsync(Definition("idle"));

        var stats = await PollAsync(async () => await (await http.GetAsync("/api/v1/domains/db/stats")).ReadJsonAsync(),
            s => s.TryGetProperty("readAt", out _), "the first reading");
        Assert.Equal("db", stats.Str("domain"));
        Assert.Equal("running", stats.Str("state"));
        Assert.False(stats.GetProperty("stale").GetBoolean());
        Assert.True(stats.GetProperty("readAt").GetDateTimeOffset() >= before.AddSeconds(-1));
        Assert.True(stats.GetProperty("vcpuSeconds").GetDouble() >= 0);
        Assert.Equal(16L * 1024 * 1024, stats.GetProperty("rssBytes").GetInt64());

        var idle = await (await http.GetAsync("/api/v1/domains/idle/stats")).ReadJsonAsync();
        Assert.Equal("shut-off", idle.Str("state"));
        Assert.False(idle.TryGetProperty("readAt", out _));
        Assert.False(idle.TryGetProperty("vcpuSeconds", out _));

        await (await http.GetAsync("/api/v1/domains/nope/stats")).AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
    }

    [Fact]
    public async Task List_IncludeStats_AddsEachDomainsFigures_AndRejectsOtherValues()
    {
        await using var app = new VirtdApplication(settings: FastStats);
        using var http = app.CreateClient();
        await http.DefineRunningAsync("a");
        await http.DefineAsync(Definition("b"));
        var list = await PollAsync(async () => await (await http.GetAsync("/api/v1/domains?include=stats")).ReadJsonAsync(),
            l => l.GetProperty("items")[0].GetProperty("stats").TryGetProperty("readAt", out _), "a's figures in the list");
        Assert.Equal("shut-off", list.GetProperty("items")[1].GetProperty("stats").Str("state"));
        var plain = await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.False(plain.GetProperty("items")[0].TryGetProperty("stats", out _));

        var bad = await (await http.GetAsync("/api/v1/domains?include=everything")).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("include", bad.FieldErrors().Keys);
    }
}

/// <summary>
/// Metrics tests run alone: OpenTelemetry listens to every meter named Virtd in the process, so the daemons of tests
/// running at the same time would add to each other's figures (and take each other's CPU from a timed scrape).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MetricsCollection
{
    public const string Name = "metrics";
}
