using System.Text.Json;
using Virtd.Core.Domains;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Events;

public sealed class EventBusTests
{
    private static EventBus NewBus(int replay = 100, int queue = 100, FakeClock? time = null) =>
        new(new EventsOptions { ReplayBuffer = replay, SubscriberQueue = queue }, time ?? new FakeClock());

    private static EventFilter Filter(string[]? domains = null, string[]? types = null) => new(domains ?? [], types ?? []);

    private static async Task<List<VirtdEvent>> ReadAsync(EventBus.Subscription sub, int count)
    {
        var got = new List<VirtdEvent>();
        using var cts = new CancellationTokenSource(CoreHarness.Patience);
        while (got.Count < count) got.Add(await sub.Reader.ReadAsync(cts.Token));
        return got;
    }

    /// <summary>Publishes <paramref name="count"/> job.queued events for domain "a" and returns their ids.</summary>
    private static long[] PublishMany(EventBus bus, int count) =>
        Enumerable.Range(0, count).Select(i => bus.Publish(EventTypes.JobQueued, "a", new System.Text.Json.Nodes.JsonObject { ["i"] = i }).Id).ToArray();

    [Fact]
    public void Publish_AssignsConsecutiveIdsFromTheRunsFirstId()
    {
        var bus = NewBus();
        Assert.Equal(bus.FirstId - 1, bus.LastId);

        var ids = PublishMany(bus, 5);

        Assert.Equal(Enumerable.Range(0, 5).Select(i => bus.FirstId + i), ids);
        Assert.Equal(ids[^1], bus.LastId);
    }

    [Fact]
    public void Ids_OfALaterRun_AreAboveEveryIdOfAnEarlierRun()
    {
        var time = new FakeClock();
        var first = NewBus(time: time);
        var last = PublishMany(first, 10_000)[^1];

        time.Advance(TimeSpan.FromSeconds(1)); // the daemon restarts a second later
        var second = NewBus(time: time);

        Assert.True(second.FirstId > last, $"the second run starts at {second.FirstId}, at or below the first run's {last}");
    }

    [Fact]
    public async Task Subscribe_WithLastEventId_ReplaysExactlyTheMissedEventsThatMatchTheFilter()
    {
        var bus = NewBus();
        // Offsets 1..12: alternating job and domain events, every third one for domain b.
        var ids = new long[13];
        for (var i = 1; i <= 12; i++)
            ids[i] = bus.Publish(i % 2 == 0 ? EventTypes.JobQueued : EventTypes.DomainLifecycle, i % 3 == 0 ? "b" : "a", new System.Text.Json.Nodes.JsonObject { ["i"] = i }).Id;

        using var sub = bus.Subscribe(Filter(domains: ["a"], types: ["job."]), lastEventId: ids[4]);

        Assert.False(sub.ResyncFirst);
        // After offset 4, domain a and type job.*: offsets 8 and 10; 6 and 12 belong to b.
        Assert.Equal([ids[8], ids[10]], sub.Replay.Select(e => e.Id).ToArray());
        Assert.Equal(ids[12], sub.Start);

        // Live events continue with no gap and no duplicate, filtered the same way.
        bus.Publish(EventTypes.DomainLifecycle, "a", new System.Text.Json.Nodes.JsonObject());
        bus.Publish(EventTypes.JobStarted, "b", new System.Text.Json.Nodes.JsonObject());
        var wanted = bus.Publish(EventTypes.JobFinished, "a", new System.Text.Json.Nodes.JsonObject());
        var live = await ReadAsync(sub, 1);
        Assert.Equal(wanted.Id, live[0].Id);
        Assert.False(sub.Reader.TryRead(out _));
    }

    [Fact]
    public void Subscribe_WithTheLatestId_ReplaysNothing()
    {
        var bus = NewBus();
        var ids = PublishMany(bus, 3);

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: ids[^1]);

        Assert.Empty(sub.Replay);
        Assert.False(sub.ResyncFirst);
    }

    [Fact]
    public void Subscribe_WithoutLastEventId_ReplaysNothing_AndStartsAtTheLastId()
    {
        var bus = NewBus();
        var ids = PublishMany(bus, 2);
        using var sub = bus.Subscribe(EventFilter.All, lastEventId: null);
        Assert.Empty(sub.Replay);
        Assert.False(sub.ResyncFirst);
        Assert.Equal(ids[^1], sub.Start);
    }

    [Fact]
    public void Subscribe_FromJustBeforeTheFirstId_ReplaysTheWholeRun()
    {
        var bus = NewBus(replay: 8);
        var ids = PublishMany(bus, 5);

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: bus.FirstId - 1);

        Assert.False(sub.ResyncFirst);
        Assert.Equal(ids, sub.Replay.Select(e => e.Id).ToArray());
    }

    [Fact]
    public async Task Subscribe_WhenIdIsOlderThanTheRing_ResyncsFirst_ThenGoesOnLive()
    {
        var bus = NewBus(replay: 8);
        var ids = PublishMany(bus, 20);
        // The ring holds offsets 12..19; a client that saw offset 10 missed 11, which is gone.

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: ids[10]);

        Assert.True(sub.ResyncFirst);
        Assert.Empty(sub.Replay); // the client re-lists: a partial replay would be of no use
        Assert.Equal(ids[^1], sub.Start);
        var next = bus.Publish(EventTypes.JobQueued, "a", new System.Text.Json.Nodes.JsonObject());
        Assert.Equal(next.Id, (await ReadAsync(sub, 1))[0].Id);
    }

    [Theory]
    [InlineData("an id of an earlier run")]
    [InlineData("just below this run's first id")]
    [InlineData("above the last id")]
    public void Subscribe_WithAnIdNotOfThisRun_Resyncs(string which)
    {
        var bus = NewBus();
        PublishMany(bus, 3);
        var id = which switch
        {
            "an id of an earlier run" => 5,
            "just below this run's first id" => bus.FirstId - 2,
            _ => bus.LastId + 1000,
        };

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: id);

        Assert.True(sub.ResyncFirst);
        Assert.Empty(sub.Replay);
    }

    [Fact]
    public void Subscribe_WhenTheNextMissedIdIsTheOldestInTheRing_ReplaysWithoutResync()
    {
        var bus = NewBus(replay: 8);
        var ids = PublishMany(bus, 20);

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: ids[11]);

        Assert.False(sub.ResyncFirst);
        Assert.Equal(ids[12..], sub.Replay.Select(e => e.Id).ToArray());
    }

    [Fact]
    public async Task Publish_WhenASubscriberNeverReads_CutsItOffWithoutBlockingOrStarvingOthers()
    {
        var bus = NewBus(queue: 4);
        using var stalled = bus.Subscribe(EventFilter.All, null);
        using var reader = bus.Subscribe(EventFilter.All, null);
        var received = new List<long>();
        var reading = Task.Run(async () =>
        {
            await foreach (var e in reader.Reader.ReadAllAsync())
            {
                received.Add(e.Id);
                if (received.Count == 100) return;
            }
        });

        // Publish must never wait for a subscriber: 100 events into a queue of 4 complete at once.
        var ids = new List<long>();
        var publishing = Task.Run(() =>
        {
            for (var i = 0; i < 100; i++)
            {
                ids.Add(bus.Publish(EventTypes.JobQueued, "a", new System.Text.Json.Nodes.JsonObject { ["i"] = i }).Id);
                // Give the reading subscriber room so that only the stalled one overflows.
                SpinWait.SpinUntil(() => reader.Reader.Count < 4, CoreHarness.Patience);
            }
        });
        await publishing.WaitAsync(CoreHarness.Patience);
        await reading.WaitAsync(CoreHarness.Patience);

        Assert.True(stalled.Overflowed);
        Assert.True(stalled.CutOff.IsCompleted);
        Assert.False(reader.Overflowed);
        Assert.Equal(ids, received);
        // The stalled subscriber left the bus at once: publishing no longer looks at it.
        Assert.Equal(1, bus.SubscriberCount);
        // It keeps what fit, then its stream ends (the API turns that into a resync).
        var kept = new List<long>();
        await foreach (var e in stalled.Reader.ReadAllAsync().WithCancellation(new CancellationTokenSource(CoreHarness.Patience).Token)) kept.Add(e.Id);
        Assert.Equal(ids[..4], kept);
    }

    [Fact]
    public void Filter_ByUuid_MatchesTheDomainsEvents_AndADomainFilterLeavesOutDaemonEvents()
    {
        var uuid = Guid.NewGuid();
        var bus = NewBus();
        using var byUuid = bus.Subscribe(Filter(domains: [uuid.ToString()]), null);
        using var byName = bus.Subscribe(Filter(domains: ["vm"]), null);
        using var daemon = bus.Subscribe(Filter(types: ["daemon."]), null);

        var mine = bus.Publish(EventTypes.JobQueued, "vm", new System.Text.Json.Nodes.JsonObject(), uuid);
        bus.Publish(EventTypes.JobQueued, "other", new System.Text.Json.Nodes.JsonObject(), Guid.NewGuid());
        var state = bus.Publish(EventTypes.DaemonState, null, new DaemonEventData("ready"));

        Assert.True(byUuid.Reader.TryRead(out var a) && a.Id == mine.Id && !byUuid.Reader.TryRead(out _));
        Assert.True(byName.Reader.TryRead(out var b) && b.Id == mine.Id && !byName.Reader.TryRead(out _));
        Assert.True(daemon.Reader.TryRead(out var c) && c.Id == state.Id && !daemon.Reader.TryRead(out _));
    }

    [Fact]
    public void Json_IsOneFlatObject_InTheApisShape()
    {
        var bus = NewBus();
        var uuid = Guid.NewGuid();
        var jobId = Guid.NewGuid();
        var domain = bus.Publish(EventTypes.DomainLifecycle, "vm",
            new DomainEventData("vm", uuid, "shutting-down", DomainState.ShuttingDown, StateReasons.Acpi), uuid);
        var job = bus.Publish(EventTypes.JobFinished, "vm", new JobEventData(jobId, JobKind.Shutdown, JobState.Succeeded, "vm", uuid), uuid);

        var d = JsonDocument.Parse(domain.Json).RootElement;
        Assert.Equal(domain.Id, d.GetProperty("id").GetInt64());
        Assert.Equal("domain.lifecycle", d.GetProperty("type").GetString());
        Assert.Equal(domain.Time, d.GetProperty("time").GetDateTimeOffset());
        Assert.Equal("vm", d.GetProperty("domain").GetString());
        Assert.Equal(uuid, d.GetProperty("domainUuid").GetGuid());
        Assert.Equal("shutting-down", d.GetProperty("event").GetString());
        Assert.Equal("shutting-down", d.GetProperty("state").GetString());
        Assert.Equal("acpi", d.GetProperty("reason").GetString());

        var j = JsonDocument.Parse(job.Json).RootElement;
        Assert.Equal(jobId, j.GetProperty("jobId").GetGuid());
        Assert.Equal("shutdown", j.GetProperty("kind").GetString());
        Assert.Equal("succeeded", j.GetProperty("state").GetString());
        Assert.False(j.TryGetProperty("errorCode", out _)); // nulls are left out, as everywhere in the API

        var empty = JsonDocument.Parse(bus.Publish("x", null, new System.Text.Json.Nodes.JsonObject()).Json).RootElement;
        Assert.Equal(["id", "type", "time"], empty.EnumerateObject().Select(p => p.Name));
    }

    [Fact]
    public void Dispose_StopsDelivery()
    {
        var bus = NewBus();
        var sub = bus.Subscribe(EventFilter.All, null);
        Assert.Equal(1, bus.SubscriberCount);

        sub.Dispose();
        bus.Publish(EventTypes.JobQueued, "a", new System.Text.Json.Nodes.JsonObject());

        Assert.Equal(0, bus.SubscriberCount);
        Assert.False(sub.Reader.TryRead(out _));
        Assert.True(sub.Reader.Completion.IsCompleted);
    }
}
