using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Events;

/// <summary>What a subscriber sees of one domain: its events in the order of its state changes, each once.</summary>
public sealed class DomainEventOrderTests
{
    private static async Task<List<VirtdEvent>> ReadAsync(EventBus.Subscription sub, int count)
    {
        var got = new List<VirtdEvent>();
        using var cts = new CancellationTokenSource(CoreHarness.Patience);
        while (got.Count < count) got.Add(await sub.Reader.ReadAsync(cts.Token));
        return got;
    }

    private static string Describe(VirtdEvent e) => e.Data switch
    {
        DomainEventData d => string.Join(' ', new[] { e.Type, d.Event, d.State?.ToString() }.Where(x => x is not null)),
        JobEventData j => $"{e.Type} {j.Kind} {j.State}",
        _ => e.Type,
    };

    [Fact]
    public async Task DefineStartSuspendResumeDestroyUndefine_PublishesEveryStepOnceInOrder()
    {
        await using var h = new CoreHarness();
        using var sub = h.Bus.Subscribe(new EventFilter(["vm"], []), null);

        var d = await h.DefineAsync("vm");
        foreach (var action in new[] { JobKind.Start, JobKind.Suspend, JobKind.Resume, JobKind.Destroy })
            Assert.Equal(JobState.Succeeded, (await h.RunAsync("vm", CoreHarness.Command(action))).State);
        await h.Service.UndefineAsync("vm", null, CancellationToken.None);

        string[] expected =
        [
            "domain.defined ShutOff",
            "job.queued Start Queued", "job.started Start Running", "domain.lifecycle started Running", "job.finished Start Succeeded",
            "job.queued Suspend Queued", "job.started Suspend Running", "domain.lifecycle suspended Paused", "job.finished Suspend Succeeded",
            "job.queued Resume Queued", "job.started Resume Running", "domain.lifecycle resumed Running", "job.finished Resume Succeeded",
            // Destroy sends SIGTERM as it is queued, before it runs: the simulated VM dies at once.
            "job.queued Destroy Queued", "domain.lifecycle destroyed ShutOff", "job.started Destroy Running", "job.finished Destroy Succeeded",
            "domain.undefined ShutOff",
        ];
        var events = await ReadAsync(sub, expected.Length);
        Assert.Equal(expected, events.Select(Describe));
        Assert.All(events, e => Assert.Equal(d.Uuid, e.DomainUuid));
        Assert.Equal(events.Select(e => e.Id).Order(), events.Select(e => e.Id));
        Assert.False(sub.Reader.TryRead(out var extra), $"published more than once: {extra}");
    }

    [Fact]
    public async Task Define_IsPublishedBeforeAnyEventOfARequestThatFoundTheNewDomain()
    {
        // A client that learns of a domain from anywhere must not see its jobs before domain.defined.
        // Each round races a define against a start that is retried until the domain can be found.
        await using var h = new CoreHarness(events: o => o.SubscriberQueue = 100_000);
        using var sub = h.Bus.Subscribe(new EventFilter([], ["domain.defined", "job.queued"]), null);
        const int Rounds = 300;
        for (var i = 0; i < Rounds; i++)
        {
            var name = $"race-{i}";
            using var stop = new CancellationTokenSource(CoreHarness.Patience);
            var start = Task.Run(() =>
            {
                while (true)
                {
                    stop.Token.ThrowIfCancellationRequested();
                    try { return h.Service.Submit(name, new StartCommand()); }
                    catch (VirtdException e) when (e.Code == ErrorCodes.DomainNotFound) { }
                }
            });
            await h.DefineAsync(name);
            await CoreHarness.FinishedAsync(await start);
        }

        var first = new Dictionary<string, string>();
        foreach (var e in await ReadAsync(sub, Rounds * 2)) first.TryAdd(e.Domain!, e.Type);
        var wrong = first.Where(p => p.Value != EventTypes.DomainDefined).Select(p => p.Key).ToList();
        Assert.True(wrong.Count == 0, $"job.queued came before domain.defined for {wrong.Count} of {Rounds} domains, e.g. {wrong.FirstOrDefault()}");
    }

    [Fact]
    public async Task Update_PublishesUpdatedOnceWhenTheDefinitionChanges_AndNothingWhenItDoesNot()
    {
        await using var h = new CoreHarness();
        await h.DefineAsync("vm");
        using var sub = h.Bus.Subscribe(new EventFilter(["vm"], []), null);

        await h.Service.UpdateAsync("vm", CoreHarness.Definition("vm") with { MemoryMiB = 128 }, null, CancellationToken.None);
        await h.Service.UpdateAsync("vm", CoreHarness.Definition("vm") with { MemoryMiB = 128 }, null, CancellationToken.None);

        var e = (await ReadAsync(sub, 1))[0];
        Assert.Equal(EventTypes.DomainUpdated, e.Type);
        Assert.False(sub.Reader.TryRead(out var extra), $"unexpected: {extra}");
    }

    [Fact]
    public async Task Announce_AfterTheVmHasExited_PublishesNothing()
    {
        // A reset or reboot that completes as the VM dies must not report "rebooted" after "destroyed".
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("vm");
        var vm = d.Instance!;
        Assert.Equal(JobState.Succeeded, (await h.RunAsync("vm", new DestroyCommand())).State);
        using var sub = h.Bus.Subscribe(new EventFilter(["vm"], []), null);

        Assert.False(d.Announce(vm, "rebooted"));

        Assert.False(sub.Reader.TryRead(out var e), $"published for an exited VM: {e}");
    }
}
