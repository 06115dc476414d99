using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry.Trace;
using Virtd.Drivers.Qemu.Tests.Support;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Metrics, per-VM figures and traces of real QEMU guests.</summary>
[Collection(QemuCollection.Name)]
public sealed class QemuObservabilityTests
{
    private static readonly Dictionary<string, string?> FastStats = new()
    {
        ["Metrics:StatsInterval"] = "00:00:00.250",
        ["Metrics:StatsTimeout"] = "00:00:00.500",
    };

    private static async Task<string> ScrapeTextAsync(HttpClient http)
    {
        var r = await http.GetAsync("/metrics");
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.IsSuccessStatusCode, $"/metrics: {(int)r.StatusCode} {body}");
        return body;
    }

    private static async Task<List<PrometheusSample>> ScrapeUntilAsync(HttpClient http, Func<List<PrometheusSample>, bool> done, string what,
        TimeSpan? within = null)
    {
        var deadline = DateTime.UtcNow + (within ?? TimeSpan.FromSeconds(30));
        while (true)
        {
            var samples = PrometheusText.Parse(await ScrapeTextAsync(http));
            if (done(samples)) return samples;
            if (DateTime.UtcNow > deadline) Assert.Fail($"no scrape showed {what}");
            await Task.Delay(100);
        }
    }

    /// <summary><c>promtool check metrics</c> (Debian's prometheus package): exit 0 means no parse error and no lint problem.</summary>
    private static async Task AssertPromtoolAcceptsAsync(string scrape)
    {
        var promtool = new[] { "/usr/bin/promtool", "/usr/local/bin/promtool" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("promtool is not installed: scripts/install-deps installs it (apt-get install prometheus)");
        using var p = Process.Start(new ProcessStartInfo(promtool, ["check", "metrics"])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        })!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.StandardInput.WriteAsync(scrape);
        p.StandardInput.Close();
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(p.ExitCode == 0, $"promtool check metrics exited {p.ExitCode}: {await stdout}{await stderr}");
    }

    [Fact]
    public async Task Scrape_WhileFiveGuestsRunAndJobsFlow_PassesPromtool_AndItsFiguresMoveAsTheGuestsWork()
    {
        await using var q = new QemuApp(FastStats, testGuest: true);
        const int diskBytes = 4 * 1024 * 1024;
        var names = Enumerable.Range(0, 5).Select(i => $"g{i}").ToArray();
        var uuids = new Dictionary<string, string>();
        foreach (var name in names)
        {
            var image = q.App.CreateImage($"{name}.img", diskBytes);
            var d = await q.Http.DefineAsync(TestGuest.Definition(name, new
            {
                boot = new { kernel = TestGuest.Kernel, initrd = TestGuest.Initrd, cmdline = "console=ttyS0 quiet panic=-1 virtd.test=readdisk" },
                disks = new[] { new { path = image, format = "raw", bus = "virtio" } },
            }));
            uuids[name] = d.Str("uuid")!;
            await q.StartAsync(name);
        }
        foreach (var name in names) await TestGuest.WaitForLineAsync(q, name, "virtd-test-guest: disk read");

        // Jobs flow while the figures are read: suspend and resume g0 over and over.
        using var stop = new CancellationTokenSource();
        var jobs = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await q.Http.ActAsync("g0", "suspend", wait: 30);
                await q.Http.ActAsync("g0", "resume", wait: 30);
            }
        });
        try
        {
            var first = await ScrapeUntilAsync(q.Http, s => names.All(n => s.Value("virtd_domain_block_read_bytes_total", ("domain", n), ("disk", "disk0")) >= diskBytes),
                "every guest's read of its whole disk");
            var sw = Stopwatch.StartNew();
            var second = await ScrapeUntilAsync(q.Http, s => names.All(n =>
                    s.Value("virtd_domain_vcpu_time_seconds_total", ("domain", n)) > first.Value("virtd_domain_vcpu_time_seconds_total", ("domain", n))),
                "every guest's vCPU time grow");
            var text = await ScrapeTextAsync(q.Http);
            await AssertPromtoolAcceptsAsync(text);

            var last = PrometheusText.Parse(text);
            foreach (var n in names)
            {
                var who = ("domain", n);
                Assert.Equal(0, last.Value("virtd_domain_stats_stale", who, ("uuid", uuids[n])));
                Assert.True(last.Value("virtd_domain_memory_rss_bytes", who) > 16 * 1024 * 1024, $"{n}'s RSS");
                Assert.Equal(128L * 1024 * 1024, last.Value("virtd_domain_balloon_actual_bytes", who));
                Assert.True(last.Value("virtd_domain_block_read_operations_total", who, ("disk", "disk0")) > 0);
                Assert.NotNull(last.Value("virtd_domain_block_write_bytes_total", who, ("disk", "disk0")));
                Assert.NotNull(last.Value("virtd_domain_block_read_time_seconds_total", who, ("disk", "disk0")));
                Assert.True(last.Value("virtd_domain_vcpu_time_seconds_total", who) < 5 * (sw.Elapsed.TotalSeconds + 60), "vCPU time is seconds, not ticks");
            }
            Assert.True(last.Value("virtd_qmp_commands_total", ("command", "query-blockstats"), ("outcome", "ok")) > 0);
            // The guests have no balloon device: each VM is asked once, not at every read, so the error count stays flat.
            Assert.True(last.Value("virtd_qmp_commands_total", ("command", "query-balloon"), ("outcome", "error")) <= names.Length);
            Assert.True(last.Value("virtd_qmp_command_duration_seconds_count", ("command", "cont")) > 0);
            Assert.True(last.Value("virtd_jobs_finished_total", ("kind", "suspend"), ("outcome", "succeeded")) > 0);
            Assert.Equal(5, last.Value("virtd_domains", ("driver", "qemu"), ("state", "running")) + last.Value("virtd_domains", ("driver", "qemu"), ("state", "paused")));
        }
        finally
        {
            await stop.CancelAsync();
            await jobs.WaitAsync(TimeSpan.FromSeconds(60));
        }
    }

    [Fact]
    public async Task Stats_OfASigstoppedQemu_AreServedInTime_KeptFromBefore_AndMarkedStale()
    {
        await using var q = new QemuApp(FastStats);
        await q.DefineDisklessAsync("frozen");
        var pid = await q.StartAsync("frozen");
        var fresh = await PollAsync(async () => await (await q.Http.GetAsync("/api/v1/domains/frozen/stats")).ReadJsonAsync(),
            s => s.TryGetProperty("vcpuSeconds", out _) && !s.GetProperty("stale").GetBoolean(), "a fresh reading", TimeSpan.FromSeconds(30));

        QemuHost.Signal(pid, "STOP");
        try
        {
            var samples = await ScrapeUntilAsync(q.Http, s => s.Value("virtd_domain_stats_stale", ("domain", "frozen")) == 1, "the frozen VM marked stale");
            Assert.NotNull(samples.Value("virtd_domain_vcpu_time_seconds_total", ("domain", "frozen"))); // its last value stays
            var times = new List<double>();
            for (var i = 0; i < 10; i++)
            {
                var sw = Stopwatch.StartNew();
                await ScrapeTextAsync(q.Http);
                var stats = await (await q.Http.GetAsync("/api/v1/domains/frozen/stats")).ReadJsonAsync();
                times.Add(sw.Elapsed.TotalMilliseconds);
                Assert.True(stats.GetProperty("stale").GetBoolean());
                Assert.Equal(fresh.GetProperty("rssBytes").GetInt64() > 0, stats.GetProperty("rssBytes").GetInt64() > 0);
            }
            Assert.True(times.Max() < 250, $"a scrape and a stats read of a hung VM took (ms): {string.Join(", ", times.Select(t => t.ToString("0.0")))}");
        }
        finally
        {
            QemuHost.Signal(pid, "CONT");
        }
        await ScrapeUntilAsync(q.Http, s => s.Value("virtd_domain_stats_stale", ("domain", "frozen")) == 0, "the VM fresh again once it runs");
    }

    [Fact]
    public async Task Trace_OfAStart_RunsFromTheRequestThroughTheJobToEachQmpCommand()
    {
        var spans = new List<Activity>();
        await using var q = new QemuApp(new Dictionary<string, string?> { ["OpenTelemetry:OtlpEndpoint"] = "http://127.0.0.1:4317" },
            services: s => s.ConfigureOpenTelemetryTracerProvider(t => t.AddInMemoryExporter(spans)));
        await q.DefineDisklessAsync("traced");
        await q.StartAsync("traced");

        Activity[] all;
        var deadline = DateTime.UtcNow + Patience;
        while (true)
        {
            lock (spans) all = [.. spans];
            if (all.Any(a => a.DisplayName == "job start") && all.Any(a => a.DisplayName == "qmp cont")) break;
            if (DateTime.UtcNow > deadline) Assert.Fail($"spans so far: {string.Join(", ", all.Select(a => a.DisplayName))}");
            await Task.Delay(20);
        }
        var request = Assert.Single(all, a => a.Kind == ActivityKind.Server && a.DisplayName.StartsWith("POST", StringComparison.Ordinal)
            && a.GetTagItem("http.route") as string == "/api/v1/domains/{id}/start");
        var job = Assert.Single(all, a => a.DisplayName == "job start");
        Assert.Equal(request.TraceId, job.TraceId);
        Assert.Equal(request.SpanId, job.ParentSpanId);
        Assert.Equal("traced", job.GetTagItem("virtd.domain.name"));
        Assert.Equal("succeeded", job.GetTagItem("virtd.job.outcome"));
        var qmp = all.Where(a => a.DisplayName.StartsWith("qmp ", StringComparison.Ordinal) && a.TraceId == job.TraceId).ToList();
        Assert.Contains(qmp, a => a.DisplayName == "qmp qmp_capabilities");
        Assert.Contains(qmp, a => a.DisplayName == "qmp cont");
        Assert.All(qmp, a => Assert.Equal(job.SpanId, a.ParentSpanId));
        Assert.All(qmp, a => Assert.Equal("ok", a.GetTagItem("virtd.qmp.outcome")));
    }
}
