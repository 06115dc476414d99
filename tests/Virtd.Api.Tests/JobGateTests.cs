using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>
/// One state-changing job per domain: what waits behind a busy domain, how long, what the gate shows,
/// the queue limits, and destroy, which always gets through.
/// </summary>
public sealed class JobGateTests
{
    [Fact]
    public async Task QueuedJob_WaitingLongerThanWaitTimeout_FailsDomainBusyNamingTheHolder()
    {
        await using var app = HungDomain.App(waitTimeout: "00:00:01");
        using var http = app.CreateClient();
        var holder = await http.StartHungAsync("hung");

        var waiting = await http.ActAsync("hung", "shutdown");
        var job = await http.FinishedJobAsync(waiting.Id());

        Assert.Equal("failed", job.Str("state"));
        var error = job.GetProperty("error");
        Assert.Equal("domain-busy", error.Str("code"));
        Assert.Equal(409, error.GetProperty("status").GetInt32());
        Assert.Contains(holder.Id(), error.Str("detail"));
        Assert.Contains("start", error.Str("detail"));
        Assert.False(job.TryGetProperty("startedAt", out _));
        Assert.Equal("running", (await http.GetJobAsync(holder.Id())).Str("state"));
    }

    [Fact]
    public async Task PutAndDelete_OnADomainBusyLongerThanWaitTimeout_Are409DomainBusy()
    {
        await using var app = HungDomain.App(waitTimeout: "00:00:01");
        using var http = app.CreateClient();
        var holder = await http.StartHungAsync("hung");
        var etag = (await http.GetAsync("/api/v1/domains/hung")).ETag();

        var put = await http.PutAsync("/api/v1/domains/hung", Raw("{\"name\":\"hung\",\"memoryMiB\":128}"));
        var delete = await http.DeleteAsync("/api/v1/domains/hung");

        var p = await put.AssertProblemAsync(HttpStatusCode.Conflict, "domain-busy");
        Assert.Contains(holder.Id(), p.Str("detail"));
        await delete.AssertProblemAsync(HttpStatusCode.Conflict, "domain-busy");
        Assert.Equal(etag, (await http.GetAsync("/api/v1/domains/hung")).ETag());
    }

    [Fact]
    public async Task Reads_AreNeverBlockedByABusyDomain_AndShowItsCurrentJob()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        var holder = await http.StartHungAsync("hung");
        var sw = Stopwatch.StartNew();

        var d = await http.GetDomainAsync("hung");
        var list = await http.GetAsync("/api/v1/domains");
        var host = await http.GetAsync("/api/v1/host");

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"reads took {sw.Elapsed}");
        Assert.Equal(HttpStatusCode.OK, list.StatusCode);
        Assert.Equal(HttpStatusCode.OK, host.StatusCode);
        var current = d.GetProperty("currentJob");
        Assert.Equal(holder.Id(), current.Id());
        Assert.Equal("start", current.Str("kind"));
        Assert.Equal("shut-off", d.Str("state"));
    }

    [Fact]
    public async Task List_ItemsAreWhatSingleReadsAnswer_AndABusyDomainsItemShowsItsJob()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("a-idle"));
        await http.DefineAsync(Definition("b-idle"));
        var holder = await http.StartHungAsync("hung");
        await http.DefineAsync(Definition("z-last"));

        var page = await http.GetAsync("/api/v1/domains?limit=3");
        var text = await page.Content.ReadAsStringAsync();

        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(text), page.Content.Headers.ContentLength);
        using var doc = JsonDocument.Parse(text);
        var root = doc.RootElement;
        Assert.Equal(["count", "items", "next"], root.EnumerateObject().Select(p => p.Name));
        Assert.Equal(3, root.GetProperty("count").GetInt32());
        var items = root.GetProperty("items").EnumerateArray().ToList();
        Assert.Equal(["a-idle", "b-idle", "hung"], items.Select(i => i.Str("name")));
        foreach (var idle in new[] { "a-idle", "b-idle" })
            Assert.Equal(await http.GetStringAsync($"/api/v1/domains/{idle}"), items.Single(i => i.Str("name") == idle).GetRawText());
        Assert.Equal(holder.Id(), items[2].GetProperty("currentJob").Id());
        Assert.False(items[0].TryGetProperty("currentJob", out _));

        var rest = await (await http.GetAsync("/api/v1/domains?limit=3&after=" + Uri.EscapeDataString(root.Str("next")!))).ReadJsonAsync();
        Assert.Equal(["z-last"], rest.GetProperty("items").EnumerateArray().Select(i => i.Str("name")));
        Assert.False(rest.TryGetProperty("next", out _));
    }

    [Fact]
    public async Task Gate_OfAnIdleDomain_HasNoHolderAndNothingQueued()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("idle"));

        var r = await http.GetAsync("/api/v1/domains/idle/gate");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var gate = await r.ReadJsonAsync();
        Assert.Equal("idle", gate.Str("domain"));
        Assert.False(gate.TryGetProperty("holder", out _));
        Assert.False(gate.TryGetProperty("heldSeconds", out _));
        Assert.Empty(gate.GetProperty("queued").EnumerateArray());
    }

    [Fact]
    public async Task Gate_OfABusyDomain_ShowsTheHolderSinceWhenAndTheQueueInOrder()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        var before = DateTimeOffset.UtcNow;
        var holder = await http.StartHungAsync("hung");
        var first = await http.ActAsync("hung", "shutdown");
        var second = await http.ActAsync("hung", "start");

        var r = await http.GetAsync("/api/v1/domains/hung/gate");

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var gate = await r.ReadJsonAsync();
        var h = gate.GetProperty("holder");
        Assert.Equal(holder.Id(), h.Id());
        Assert.Equal("start", h.Str("kind"));
        Assert.Equal("running", h.Str("state"));
        var since = h.GetProperty("since").GetDateTimeOffset();
        Assert.InRange(since, before.AddSeconds(-1), DateTimeOffset.UtcNow);
        Assert.InRange(h.GetProperty("ageSeconds").GetDouble(), 0, (DateTimeOffset.UtcNow - since).TotalSeconds + 1);
        var queued = gate.GetProperty("queued").EnumerateArray().ToArray();
        Assert.All(queued, j => Assert.True(j.GetProperty("ageSeconds").GetDouble() >= 0));
        Assert.Equal([first.Id(), second.Id()], queued.Select(j => j.Id()).ToArray());
        Assert.Equal(["shutdown", "start"], queued.Select(j => j.Str("kind")!).ToArray());
        Assert.All(queued, j => Assert.Equal("queued", j.Str("state")));
    }

    [Fact]
    public async Task Gate_OfAnUnknownDomain_Is404()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/api/v1/domains/nobody/gate");

        await r.AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
    }

    [Fact]
    public async Task Action_BeyondThePerDomainQueueLimit_Is429QueueFullWithRetryAfter()
    {
        await using var app = HungDomain.App(more: new Dictionary<string, string?> { ["Jobs:PerDomainQueueLimit"] = "2" });
        using var http = app.CreateClient();
        await http.StartHungAsync("hung");
        await http.ActAsync("hung", "shutdown");
        await http.ActAsync("hung", "start");

        var r = await http.PostActionAsync("hung", "shutdown");

        var p = await r.AssertProblemAsync(HttpStatusCode.TooManyRequests, "queue-full");
        Assert.Contains("Jobs:PerDomainQueueLimit", p.Str("detail"));
        var retryAfter = r.Headers.RetryAfter?.Delta;
        Assert.True(retryAfter >= TimeSpan.FromSeconds(1), $"Retry-After: {r.Headers.RetryAfter}");
        var gate = await (await http.GetAsync("/api/v1/domains/hung/gate")).ReadJsonAsync();
        Assert.Equal(2, gate.GetProperty("queued").GetArrayLength());
        Assert.Equal(3, (await (await http.GetAsync("/api/v1/jobs?domain=hung")).ReadJsonAsync()).GetProperty("count").GetInt32());

        // Other domains are not affected.
        await http.DefineAsync(Definition("other"));
        Assert.Equal("succeeded", (await http.ActAsync("other", "start", wait: 10)).Str("state"));
    }

    [Fact]
    public async Task Action_BeyondTheGlobalQueueLimit_Is429_ButDestroyStillGetsThrough()
    {
        await using var app = HungDomain.App(more: new Dictionary<string, string?> { ["Jobs:QueueLimit"] = "2" });
        using var http = app.CreateClient();
        await http.StartHungAsync("hung");
        await http.ActAsync("hung", "shutdown");
        await http.ActAsync("hung", "start");
        await http.DefineAsync(Definition("other"));

        var r = await http.PostActionAsync("other", "start");

        var p = await r.AssertProblemAsync(HttpStatusCode.TooManyRequests, "queue-full");
        Assert.Contains("Jobs:QueueLimit", p.Str("detail"));
        Assert.NotNull(r.Headers.RetryAfter);
        var destroy = await http.ActAsync("hung", "destroy", wait: 10);
        Assert.Equal("succeeded", destroy.Str("state"));
    }

    [Fact]
    public async Task Destroy_SupersedesTheQueuedJobsAndTheRunningOne()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        var holder = await http.StartHungAsync("hung");
        var queuedShutdown = await http.ActAsync("hung", "shutdown");
        var queuedStart = await http.ActAsync("hung", "start");

        var destroy = await http.ActAsync("hung", "destroy", wait: 10);

        Assert.Equal("succeeded", destroy.Str("state"));
        foreach (var id in new[] { holder.Id(), queuedShutdown.Id(), queuedStart.Id() })
        {
            var job = await http.FinishedJobAsync(id);
            Assert.Equal("superseded", job.Str("state"));
            Assert.Equal("superseded", job.GetProperty("error").Str("code"));
            Assert.Contains(destroy.Id(), job.GetProperty("error").Str("detail"));
        }
        Assert.Equal("shut-off", await http.StateOfAsync("hung"));
        var gate = await (await http.GetAsync("/api/v1/domains/hung/gate")).ReadJsonAsync();
        Assert.False(gate.TryGetProperty("holder", out _));
        Assert.Empty(gate.GetProperty("queued").EnumerateArray());
    }

    [Fact]
    public async Task Destroy_DuringALongShutdown_StopsTheDomainAtOnce()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("stubborn", new { ignoresAcpi = true });
        var shutdown = await http.ActAsync("stubborn", "shutdown", new { timeout = 120 });
        await http.RunningJobAsync(shutdown.Id());
        var queuedSuspend = await http.ActAsync("stubborn", "suspend");

        var destroy = await http.ActAsync("stubborn", "destroy", wait: 10);

        Assert.Equal("succeeded", destroy.Str("state"));
        Assert.Equal("sigterm", destroy.GetProperty("result").Str("stoppedBy"));
        Assert.Equal("superseded", (await http.FinishedJobAsync(shutdown.Id())).Str("state"));
        Assert.Equal("superseded", (await http.FinishedJobAsync(queuedSuspend.Id())).Str("state"));
        var d = await http.GetDomainAsync("stubborn");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("destroyed", d.Str("reason"));
    }

    /// <summary>
    /// The superseded shutdown gives up (clearing its stop intent) at about the moment the destroy's SIGTERM
    /// lands; which comes first is up to the thread pool, so several domains go through it at once, many
    /// times. A destroyed domain must never look crashed (with onCrash=restart it would come back), nor stay
    /// shutting down.
    /// </summary>
    [Fact]
    public async Task Destroy_DuringAShutdown_AlwaysEndsDestroyed_NeverCrashedOrStuck()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        async Task Rounds(string name)
        {
            await http.DefineAsync(new { name, memoryMiB = 64, onCrash = "restart", simulation = new { ignoresAcpi = true } });
            for (var i = 0; i < 15; i++)
            {
                await http.ActAsync(name, "start", wait: 10);
                // Every other round the destroy follows at once, while a worker may just be picking the shutdown up.
                var shutdown = await http.ActAsync(name, "shutdown", new { timeout = 120 });
                if (i % 2 == 0) await http.RunningJobAsync(shutdown.Id());

                var destroy = await http.ActAsync(name, "destroy", wait: 10);

                Assert.Equal("succeeded", destroy.Str("state"));
                var d = await http.GetDomainAsync(name);
                Assert.True(d.Str("state") == "shut-off" && d.Str("reason") == "destroyed",
                    $"{name} round {i}: after destroy the domain is {d.Str("state")} ({d.Str("reason")})");
                var gate = await (await http.GetAsync($"/api/v1/domains/{name}/gate")).ReadJsonAsync();
                Assert.False(gate.TryGetProperty("holder", out _), $"{name} round {i}: something still runs after the destroy: {gate}");
            }
        }

        await Task.WhenAll(Enumerable.Range(0, 6).Select(i => Rounds($"vm{i}")));
    }
}
