using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Virtd.Testing;
using Virtd.Core.Events;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>GET /api/v1/events: typed, ordered, filtered, resumable Server-Sent Events.</summary>
public sealed class EventsApiTests
{
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(10);

    private static VirtdApplication App(int? replay = null, int? heartbeat = null)
    {
        var settings = new Dictionary<string, string?>();
        if (replay is { } r) settings["Events:ReplayBuffer"] = r.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (heartbeat is { } h) settings["Events:HeartbeatSeconds"] = h.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new VirtdApplication(settings: settings);
    }

    private static string Summary(SseFrame e) =>
        string.Join(' ', new[] { e.Type, e.Str("event") ?? e.Str("kind"), e.Str("state") }.Where(s => s is not null));

    [Fact]
    public async Task Stream_ShowsDefineStartSuspendResumeDestroy_InOrder_WithTheirPayloads()
    {
        await using var app = App();
        using var http = app.CreateClient();
        await using var sse = await SseClient.OpenAsync(http, "/api/v1/events?domain=vm&types=domain.");

        Assert.Equal("no-cache", sse.Response.Headers.CacheControl?.ToString());
        Assert.Equal("no", sse.Response.Headers.GetValues("X-Accel-Buffering").Single());
        var uuid = (await http.DefineAsync(Definition("vm"))).GetProperty("uuid").GetGuid();
        foreach (var action in new[] { "start", "suspend", "resume", "destroy" }) await http.ActAsync("vm", action, wait: 10);

        var events = await sse.EventsAsync(5, Quick);

        Assert.Equal(
            ["domain.defined shut-off", "domain.lifecycle started running", "domain.lifecycle suspended paused",
             "domain.lifecycle resumed running", "domain.lifecycle destroyed shut-off"],
            events.Select(Summary));
        Assert.Equal(["defined", "booted", "user", "unpaused", "destroyed"], events.Select(e => e.Str("reason")));
        foreach (var e in events)
        {
            var json = e.Json;
            Assert.Equal(e.Id, json.GetProperty("id").GetInt64());
            Assert.Equal(e.Type, json.GetProperty("type").GetString());
            Assert.Equal("vm", json.GetProperty("domain").GetString());
            Assert.Equal(uuid, json.GetProperty("domainUuid").GetGuid());
            Assert.True(DateTimeOffset.UtcNow - json.GetProperty("time").GetDateTimeOffset() < TimeSpan.FromMinutes(1));
        }
        Assert.Equal(events.Select(e => e.Id).Order(), events.Select(e => e.Id));
    }

    [Fact]
    public async Task Filters_IncludeTheAskedDomainsAndTypes_AndExcludeTheRest()
    {
        await using var app = App();
        using var http = app.CreateClient();
        var bUuid = (await http.DefineAsync(Definition("b"))).GetProperty("uuid").GetGuid();
        await using var onlyA = await SseClient.OpenAsync(http, "/api/v1/events?domain=a");
        await using var jobsOfB = await SseClient.OpenAsync(http, $"/api/v1/events?domain={bUuid}&types=job.");
        await using var twoTypes = await SseClient.OpenAsync(http, "/api/v1/events?types=domain.defined,job.finished&types=nothing.");
        await using var both = await SseClient.OpenAsync(http, "/api/v1/events?domain=a&domain=b&types=domain.lifecycle");

        await http.DefineAsync(Definition("a")); // the filter named it before it existed
        var startA = await http.ActAsync("a", "start", wait: 10);
        var startB = await http.ActAsync("b", "start", wait: 10);

        Assert.Equal(["domain.defined", "job.queued", "job.started", "domain.lifecycle", "job.finished"],
            (await onlyA.EventsAsync(5, Quick)).Select(e => e.Type));
        var b = await jobsOfB.EventsAsync(3, Quick);
        Assert.Equal(["job.queued start queued", "job.started start running", "job.finished start succeeded"], b.Select(Summary));
        Assert.All(b, e => Assert.Equal(startB.Id(), e.Str("jobId")));
        Assert.Equal(["domain.defined", "job.finished", "job.finished"], (await twoTypes.EventsAsync(3, Quick)).Select(e => e.Type));
        Assert.Equal(["a", "b"], (await both.EventsAsync(2, Quick)).Select(e => e.Str("domain")));

        // Nothing else came: after a marker action, each stream's very next event is the marker's.
        var destroyA = await http.ActAsync("a", "destroy", wait: 10);
        Assert.Equal("job.queued destroy queued", Summary(await onlyA.NextEventAsync(Quick)));
        Assert.Equal(destroyA.Id(), (await twoTypes.NextEventAsync(Quick)).Str("jobId"));
        Assert.Equal("domain.lifecycle destroyed shut-off", Summary(await both.NextEventAsync(Quick)));
        var destroyB = await http.ActAsync("b", "destroy", wait: 10);
        Assert.Equal(destroyB.Id(), (await jobsOfB.NextEventAsync(Quick)).Str("jobId"));
        Assert.NotEqual(startA.Id(), startB.Id());
    }

    [Fact]
    public async Task Reconnect_WithLastEventId_GetsExactlyTheMissedMatchingEvents_ThenLiveOnes()
    {
        await using var app = App();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("a");
        await http.DefineRunningAsync("b");
        // The witness stays connected throughout: what it sees is what the reconnecting client missed.
        await using var witness = await SseClient.OpenAsync(http, "/api/v1/events?domain=a");
        long last;
        await using (var first = await SseClient.OpenAsync(http, "/api/v1/events?domain=a"))
        {
            await http.ActAsync("a", "suspend", wait: 10);
            last = (await first.EventsAsync(4, Quick))[^1].Id!.Value;
        }
        Assert.Equal(4, (await witness.EventsAsync(4, Quick)).Count);

        // 25 actions on a make 100 events (queued, started, lifecycle, finished); b's are not wanted.
        for (var i = 0; i < 25; i++)
        {
            await http.ActAsync("a", i % 2 == 0 ? "resume" : "suspend", wait: 10);
            await http.ActAsync("b", i % 2 == 0 ? "suspend" : "resume", wait: 10);
        }
        var missed = await witness.EventsAsync(100, Quick);

        await using var again = await SseClient.OpenAsync(http, "/api/v1/events?domain=a", lastEventId: last);
        var replayed = await again.EventsAsync(100, Quick);
        Assert.Equal(missed.Select(e => e.Id), replayed.Select(e => e.Id));
        Assert.Equal(missed.Select(e => e.Data), replayed.Select(e => e.Data));

        await http.ActAsync("a", "destroy", wait: 10);
        var live = await again.NextEventAsync(Quick);
        Assert.Equal((await witness.NextEventAsync(Quick)).Id, live.Id);
        Assert.Equal("job.queued", live.Type);
    }

    [Fact]
    public async Task Reconnect_WithTheQueryParameter_Works_AndTheHeaderWinsOverIt()
    {
        await using var app = App();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        long opening;
        await using (var first = await SseClient.OpenAsync(http, "/api/v1/events?domain=vm"))
        {
            opening = (await first.NextFrameAsync(Quick))!.Id!.Value;
        }
        await http.ActAsync("vm", "start", wait: 10);

        await using var byQuery = await SseClient.OpenAsync(http, $"/api/v1/events?domain=vm&lastEventId={opening}");
        var missed = await byQuery.EventsAsync(4, Quick);
        Assert.Equal("job.queued", missed[0].Type);

        // An EventSource that reconnects sends the header with its newest id; the URL keeps the old one.
        await using var both = await SseClient.OpenAsync(http, $"/api/v1/events?domain=vm&lastEventId={opening}", lastEventId: missed[1].Id);
        Assert.Equal(missed.Skip(2).Select(e => e.Id), (await both.EventsAsync(2, Quick)).Select(e => e.Id));
    }

    [Fact]
    public async Task Reconnect_BeforeAnyEventCame_ResumesFromTheOpeningId_NotFromNow()
    {
        // An EventSource that had no event yet still got the opening id: what happened while it was away is replayed.
        await using var app = App();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        await using var first = await SseClient.OpenAsync(http, "/api/v1/events?domain=vm");
        var opening = await first.NextFrameAsync(Quick);
        Assert.False(opening!.IsEvent);
        Assert.NotNull(first.LastEventId);
        await first.DisposeAsync();

        await http.ActAsync("vm", "start", wait: 10);

        await using var again = await SseClient.OpenAsync(http, "/api/v1/events?domain=vm", first.LastEventId);
        Assert.Equal(["job.queued", "job.started", "domain.lifecycle", "job.finished"], (await again.EventsAsync(4, Quick)).Select(e => e.Type));
    }

    [Fact]
    public async Task Reconnect_WithAnIdOlderThanTheBuffer_GetsOneResyncFirst_ThenLiveEvents()
    {
        await using var app = App(replay: 10);
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");
        long last;
        await using (var first = await SseClient.OpenAsync(http, "/api/v1/events"))
        {
            await http.ActAsync("vm", "suspend", wait: 10);
            last = (await first.EventsAsync(4, Quick))[^1].Id!.Value;
        }
        for (var i = 0; i < 4; i++) await http.ActAsync("vm", i % 2 == 0 ? "resume" : "suspend", wait: 10); // 16 events > 10

        await using var again = await SseClient.OpenAsync(http, "/api/v1/events", lastEventId: last);
        var resync = await again.NextEventAsync(Quick);
        Assert.Equal("resync", resync.Type);
        Assert.Equal("replay-unavailable", resync.Str("reason"));
        Assert.Equal(resync.Id, resync.Json.GetProperty("id").GetInt64());
        Assert.True(resync.Id > last + 16 - 1, $"the resync's id {resync.Id} is not the last id published");

        await http.ActAsync("vm", "destroy", wait: 10);
        var live = await again.NextEventAsync(Quick);
        Assert.Equal("job.queued", live.Type);
        Assert.Equal(resync.Id + 1, live.Id);
    }

    [Fact]
    public async Task Reconnect_WithAnIdFromAnEarlierDaemonRun_GetsAResync()
    {
        // Ids go on increasing across restarts, so a kept id never replays another run's events as if they followed it.
        long earlier;
        var state = TestDirectories.Create("virtd-events-");
        await using (var first = new VirtdApplication(state))
        {
            using var http1 = first.CreateClient();
            await http1.DefineAsync(Definition("vm"));
            await using var sse = await SseClient.OpenAsync(http1, "/api/v1/events", lastEventId: 0);
            earlier = (await sse.NextEventAsync(Quick)).Id!.Value; // the resync: 0 is of no run
        }
        await using var second = new VirtdApplication(state);
        using var http = second.CreateClient();
        await http.ActAsync("vm", "start", wait: 10);

        await using var again = await SseClient.OpenAsync(http, "/api/v1/events", lastEventId: earlier);

        var resync = await again.NextEventAsync(Quick);
        Assert.Equal("resync", resync.Type);
        Assert.True(resync.Id > earlier);
    }

    [Fact]
    public async Task IdleStream_SendsHeartbeats_AndMovesItsResumePointPastOtherDomainsEvents()
    {
        await using var app = App(replay: 20, heartbeat: 1);
        using var http = app.CreateClient();
        await http.DefineRunningAsync("busy");
        await http.DefineAsync(Definition("quiet"));
        await using var sse = await SseClient.OpenAsync(http, "/api/v1/events?domain=quiet");
        var opening = (await sse.NextFrameAsync(Quick))!.Id!.Value;
        for (var i = 0; i < 10; i++) await http.ActAsync("busy", i % 2 == 0 ? "suspend" : "resume", wait: 10); // 40 events
        var bus = app.Services.GetRequiredService<EventBus>();
        var last = bus.LastId;

        // Within a few heartbeats: a comment, and an id-only frame at the bus's last id.
        var deadline = DateTime.UtcNow + Quick;
        while (sse.LastEventId < last)
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"the resume point stayed at {sse.LastEventId}, the bus is at {last}");
            var frame = await sse.NextFrameAsync(Quick);
            Assert.False(frame!.IsEvent, $"an event of another domain came through: {frame}");
        }
        Assert.True(sse.Comments > 0);
        Assert.True(opening < last);

        // Reconnecting from there needs no resync, though 40 events passed with a replay buffer of 20.
        await http.ActAsync("quiet", "start", wait: 10);
        await using var again = await SseClient.OpenAsync(http, "/api/v1/events?domain=quiet", sse.LastEventId);
        Assert.Equal("job.queued", (await again.NextEventAsync(Quick)).Type);
    }

    [Fact]
    public async Task Stream_EndsPromptlyWhenTheDaemonStops()
    {
        await using var app = App();
        using var http = app.CreateClient();
        var bus = app.Services.GetRequiredService<EventBus>();
        var lifetime = app.Services.GetRequiredService<IHostApplicationLifetime>();
        await using var sse = await SseClient.OpenAsync(http, "/api/v1/events");
        await sse.NextFrameAsync(Quick);
        var sw = Stopwatch.StartNew();

        lifetime.StopApplication();

        await sse.ReadToEndAsync(TimeSpan.FromSeconds(5));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"the stream ended {sw.Elapsed} after ApplicationStopping");
        Assert.Equal(0, bus.SubscriberCount);
    }

    [Fact]
    public async Task Stream_EndsWhenTheClientGoes_AndItsSubscriptionIsRemoved()
    {
        await using var app = App();
        using var http = app.CreateClient();
        var bus = app.Services.GetRequiredService<EventBus>();
        var sse = await SseClient.OpenAsync(http, "/api/v1/events");
        await sse.NextFrameAsync(Quick);
        Assert.Equal(1, bus.SubscriberCount);

        await sse.DisposeAsync();

        await PollAsync(() => Task.FromResult(Parse(bus.SubscriberCount.ToString(System.Globalization.CultureInfo.InvariantCulture))),
            n => n.GetInt32() == 0, "the subscription to be removed");
    }

    [Theory]
    [InlineData("?lastEventId=abc", null, "lastEventId")]
    [InlineData("?lastEventId=-5", null, "lastEventId")]
    [InlineData("", "12x", "lastEventId")]
    [InlineData("?domain=bad%20name", null, "domain")]
    [InlineData("?domain=", null, "domain")]
    public async Task BadQueryOrHeader_Is400ValidationFailed_NamingTheParameter(string query, string? header, string field)
    {
        await using var app = App();
        using var http = app.CreateClient();
        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/events" + query);
        if (header is not null) request.Headers.TryAddWithoutValidation("Last-Event-ID", header);

        using var r = await http.SendAsync(request);

        var problem = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains(field, problem.FieldErrors().Keys);
    }

    [Fact]
    public async Task OpenApi_DocumentsTheStream()
    {
        await using var app = App();
        using var http = app.CreateClient();
        var doc = Parse(await http.GetStringAsync("/openapi/v1.json"));
        var get = doc.GetProperty("paths").GetProperty("/api/v1/events").GetProperty("get");
        Assert.True(get.GetProperty("responses").GetProperty("200").GetProperty("content").TryGetProperty("text/event-stream", out _));
        Assert.Contains("Server-Sent Events", get.GetProperty("summary").GetString());
        Assert.Contains(get.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == "Last-Event-ID");
    }
}
