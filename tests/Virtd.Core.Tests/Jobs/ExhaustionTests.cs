using System.Diagnostics;
using Virtd.Core.Domains;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Jobs;

/// <summary>Waiting for a guest or a process holds no worker: deaf guests cannot stall the daemon.</summary>
public sealed class ExhaustionTests
{
    [Fact]
    public async Task TwentyShutdownsOfAcpiDeafGuests_AndFourGracefulDestroysOfSigtermDeafOnes_LeaveStartsAndDestroysWorking()
    {
        // The defaults: 8 workers, 2 priority workers. Time is manual: nothing the deaf guests wait for ever runs out.
        await using var h = new CoreHarness();
        var waiting = new List<Job>();
        for (var i = 0; i < 20; i++)
        {
            await h.DefineRunningAsync($"deaf-{i}", new SimulationConfig { IgnoresAcpi = true });
            waiting.Add(h.Service.Submit($"deaf-{i}", new ShutdownCommand { Timeout = ShutdownCommand.MaxTimeout }));
        }
        for (var i = 0; i < 4; i++)
        {
            await h.DefineRunningAsync($"stubborn-{i}", new SimulationConfig { IgnoresSigterm = true });
            waiting.Add(h.Service.Submit($"stubborn-{i}", new DestroyCommand { Graceful = true, Timeout = DestroyCommand.MaxTimeout }));
        }
        await CoreHarness.WaitUntilAsync(() => waiting.All(j => j.State == JobState.Running) && h.Scheduler.WaitingCount == 24,
            "all 24 jobs to wait for their VMs");
        await h.DefineAsync("other");
        await h.DefineRunningAsync("victim");

        var clock = Stopwatch.StartNew();
        var start = await h.RunAsync("other", new StartCommand());
        var startTook = clock.Elapsed;
        var destroy = await h.RunAsync("victim", new DestroyCommand());

        Assert.Equal(JobState.Succeeded, start.State);
        Assert.True(startTook < TimeSpan.FromSeconds(1), $"the start took {startTook.TotalMilliseconds:0} ms");
        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.All(waiting, j => Assert.Equal(JobState.Running, j.State)); // still waiting, gates still held
        Assert.Equal(DomainState.ShuttingDown, h.Service.Get("deaf-0").Runtime.State);
    }

    [Fact]
    public async Task AGracefulDestroyWaitingOnADeafProcess_IsSupersededByADestroyThatMayKill()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("stubborn", new SimulationConfig { IgnoresSigterm = true });
        var graceful = h.Service.Submit("stubborn", new DestroyCommand { Graceful = true, Timeout = DestroyCommand.MaxTimeout });
        await CoreHarness.WaitUntilAsync(() => graceful.State == JobState.Running && h.Scheduler.WaitingCount == 1, "the graceful destroy to wait");

        var forced = h.Service.Submit("stubborn", new DestroyCommand { Timeout = 0 });
        await CoreHarness.FinishedAsync(forced);
        await CoreHarness.FinishedAsync(graceful);

        Assert.Equal(JobState.Superseded, graceful.State);
        Assert.Contains(forced.Id.ToString(), graceful.Error!.Detail);
        Assert.Equal(JobState.Succeeded, forced.State);
        Assert.Equal(StopStage.Sigkill, forced.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
    }

    [Fact]
    public async Task AForcedDestroyWithALaterDeadline_WaitsBehindTheRunningOne()
    {
        await using var h = new CoreHarness();
        await h.DefineRunningAsync("stubborn", new SimulationConfig { IgnoresSigterm = true });
        var first = h.Service.Submit("stubborn", new DestroyCommand { Timeout = 5 });
        await CoreHarness.WaitUntilAsync(() => first.State == JobState.Running && h.Scheduler.WaitingCount == 1, "the first destroy to wait");

        var second = h.Service.Submit("stubborn", new DestroyCommand { Timeout = 60 });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(5));
        await CoreHarness.FinishedAsync(first);
        await CoreHarness.FinishedAsync(second);

        Assert.Equal((JobState.Succeeded, StopStage.Sigkill), (first.State, first.Result!.StoppedBy)); // not superseded: it ran to its end
        Assert.Equal(JobState.Succeeded, second.State);
        Assert.Equal(DomainState.ShutOff, h.Service.Get("stubborn").Runtime.State);
    }
}

/// <summary>What refused requests leave behind: nothing (each job's token source is freed on every path).</summary>
[Collection(TimedCollection.Name)]
public sealed class RefusalLeakTests
{
    [Fact]
    public async Task HundredThousandRefusals_QueueFullAndDomainBusy_GrowTheHeapByLessThan5MiB()
    {
        await using var h = new CoreHarness(jobs: o =>
        {
            o.PerDomainQueueLimit = 16;
            o.WaitTimeout = TimeSpan.FromSeconds(1);
            o.RetentionCount = 1; // finished jobs are not what is measured
        });
        var d = await h.DefineRunningAsync("hung");
        var holder = new BlockingRunner();
        h.Submit(JobKind.Suspend, d, holder.Runner);
        await holder.WaitStartedAsync();

        async Task RefuseAsync(int rounds)
        {
            for (var r = 0; r < rounds; r++)
            {
                // 16 jobs queue behind the hung one and will time out (domain-busy); the next 34 are turned away (queue-full).
                var queued = Enumerable.Range(0, 16).Select(_ => h.Service.Submit("hung", new ResetCommand())).ToList();
                for (var i = 0; i < 34; i++) Assert.Throws<Errors.VirtdException>(() => h.Service.Submit("hung", new ResetCommand()));
                await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(1), timers: 16);
                foreach (var j in queued) await CoreHarness.FinishedAsync(j);
                Assert.All(queued, j => Assert.Equal("domain-busy", j.Error!.Code));
            }
        }

        await RefuseAsync(100); // warm-up: pools, JIT, the event bus's ring
        var before = Heap();
        await RefuseAsync(2000); // 2,000 × (16 domain-busy + 34 queue-full) = 100,000 refusals
        var grown = Heap() - before;

        Console.WriteLine($"refusals: 100,000 (32,000 domain-busy, 68,000 queue-full): managed heap grew {grown / 1024.0:0} KiB");
        Assert.True(grown < 5 * 1024 * 1024, $"the heap grew {grown / 1024.0 / 1024.0:0.0} MiB over 100,000 refusals");
        holder.Release();
    }

    private static long Heap()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return GC.GetTotalMemory(forceFullCollection: true);
    }
}
