using Virtd.Core.Events;
using Virtd.Core.Tests.Support;

namespace Virtd.Core.Tests.Events;

public sealed class EventBusTests
{
    private static EventBus NewBus(int replay = 100, int queue = 100) =>
        new(new EventsOptions { ReplayBuffer = replay, SubscriberQueue = queue }, new ManualTimeProvider());

    private static EventFilter Filter(string[]? domains = null, string[]? types = null) => new(domains ?? [], types ?? []);

    private static async Task<List<VirtdEvent>> ReadAsync(EventBus.Subscription sub, int count)
    {
        var got = new List<VirtdEvent>();
        using var cts = new CancellationTokenSource(CoreHarness.Patience);
        while (got.Count < count) got.Add(await sub.Reader.ReadAsync(cts.Token));
        return got;
    }

    [Fact]
    public void Publish_AssignsIncreasingIds()
    {
        var bus = NewBus();
        var ids = Enumerable.Range(0, 5).Select(i => bus.Publish("domain.defined", "a", new { i }).Id).ToArray();
        Assert.Equal([1L, 2, 3, 4, 5], ids);
        Assert.Equal(5, bus.LastId);
    }

    [Fact]
    public async Task Subscribe_WithLastEventId_ReplaysExactlyTheMissedEventsThatMatchTheFilter()
    {
        var bus = NewBus();
        // 1..12: alternating domains a/b, alternating job and domain events.
        for (var i = 1; i <= 12; i++)
            bus.Publish(i % 2 == 0 ? EventTypes.JobQueued : EventTypes.DomainLifecycle, i % 3 == 0 ? "b" : "a", new { i });

        using var sub = bus.Subscribe(Filter(domains: ["a"], types: ["job."]), lastEventId: 4);

        Assert.False(sub.ResyncFirst);
        // After 4, domain a and type job.*: ids 8 (a, job) and 10 (a, job); 6 and 12 belong to b.
        Assert.Equal([8L, 10], sub.Replay.Select(e => e.Id).ToArray());
        Assert.All(sub.Replay, e => Assert.True(e.Domain == "a" && e.Type.StartsWith("job.", StringComparison.Ordinal)));

        // Live events continue with no gap and no duplicate, filtered the same way.
        bus.Publish(EventTypes.DomainLifecycle, "a", new { });
        bus.Publish(EventTypes.JobStarted, "b", new { });
        bus.Publish(EventTypes.JobFinished, "a", new { });
        var live = await ReadAsync(sub, 1);
        Assert.Equal(15, live[0].Id);
        Assert.False(sub.Reader.TryRead(out _));
    }

    [Fact]
    public void Subscribe_WithTheLatestId_ReplaysNothing()
    {
        var bus = NewBus();
        for (var i = 0; i < 3; i++) bus.Publish(EventTypes.JobQueued, "a", new { });

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: 3);

        Assert.Empty(sub.Replay);
        Assert.False(sub.ResyncFirst);
    }

    [Fact]
    public void Subscribe_WithoutLastEventId_ReplaysNothing()
    {
        var bus = NewBus();
        bus.Publish(EventTypes.JobQueued, "a", new { });
        using var sub = bus.Subscribe(EventFilter.All, lastEventId: null);
        Assert.Empty(sub.Replay);
        Assert.False(sub.ResyncFirst);
    }

    [Fact]
    public void Subscribe_WithIdZero_ReplaysEverythingStillInTheRing()
    {
        var bus = NewBus(replay: 8);
        for (var i = 0; i < 5; i++) bus.Publish(EventTypes.JobQueued, "a", new { });

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: 0);

        Assert.False(sub.ResyncFirst);
        Assert.Equal([1L, 2, 3, 4, 5], sub.Replay.Select(e => e.Id).ToArray());
    }

    [Fact]
    public void Subscribe_WhenIdIsOlderThanTheRing_SetsResyncFirst()
    {
        var bus = NewBus(replay: 8);
        for (var i = 0; i < 20; i++) bus.Publish(EventTypes.JobQueued, "a", new { });
        // The ring holds 13..20; a client that saw 11 missed 12, which is gone.

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: 11);

        Assert.True(sub.ResyncFirst);
    }

    [Fact]
    public void Subscribe_WhenTheNextMissedIdIsTheOldestInTheRing_ReplaysWithoutResync()
    {
        var bus = NewBus(replay: 8);
        for (var i = 0; i < 20; i++) bus.Publish(EventTypes.JobQueued, "a", new { });

        using var sub = bus.Subscribe(EventFilter.All, lastEventId: 12);

        Assert.False(sub.ResyncFirst);
        Assert.Equal(Enumerable.Range(13, 8).Select(i => (long)i).ToArray(), sub.Replay.Select(e => e.Id).ToArray());
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
                if (e.Id == 100) return;
            }
        });

        // Publish must never wait for a subscriber: 100 events into a queue of 4 complete at once.
        var publishing = Task.Run(() =>
        {
            for (var i = 0; i < 100; i++)
            {
                bus.Publish(EventTypes.JobQueued, "a", new { i });
                // Give the reading subscriber room so that only the stalled one overflows.
                SpinWait.SpinUntil(() => reader.Reader.Count < 4, CoreHarness.Patience);
            }
        });
        await publishing.WaitAsync(CoreHarness.Patience);
        await reading.WaitAsync(CoreHarness.Patience);

        Assert.True(stalled.Overflowed);
        Assert.False(reader.Overflowed);
        Assert.Equal(Enumerable.Range(1, 100).Select(i => (long)i), received);
        // The stalled subscriber gets what fit, then its stream ends (the API turns that into a resync).
        var kept = new List<long>();
        await foreach (var e in stalled.Reader.ReadAllAsync().WithCancellation(new CancellationTokenSource(CoreHarness.Patience).Token)) kept.Add(e.Id);
        Assert.Equal([1L, 2, 3, 4], kept);
    }

    [Fact]
    public void Dispose_StopsDelivery()
    {
        var bus = NewBus();
        var sub = bus.Subscribe(EventFilter.All, null);
        Assert.Equal(1, bus.SubscriberCount);

        sub.Dispose();
        bus.Publish(EventTypes.JobQueued, "a", new { });

        Assert.Equal(0, bus.SubscriberCount);
        Assert.False(sub.Reader.TryRead(out _));
        Assert.True(sub.Reader.Completion.IsCompleted);
    }
}
