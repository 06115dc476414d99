using System.Collections.Concurrent;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Jobs;

/// <summary>One state-changing job per domain at a time, FIFO behind it, bounded waits, and destroy that never queues behind a hang.</summary>
public sealed class JobGateTests
{
    private static TestBody Recording(ConcurrentQueue<int> order, int i) => (job, _) =>
    {
        order.Enqueue(i);
        return Task.FromResult(new JobResult());
    };

    [Fact]
    public async Task QueuedJobs_RunOneAtATimeInTheOrderTheyWereSubmitted()
    {
        await using var h = new CoreHarness(jobs: o => o.Workers = 4);
        var d = await h.DefineAsync("fifo");
        var holder = new BlockingRunner();
        var first = h.Submit(JobKind.Start, d, holder.Runner);
        await holder.WaitStartedAsync();
        var order = new ConcurrentQueue<int>();
        var running = 0;
        var overlapped = false;
        var queued = Enumerable.Range(0, 12).Select(i => h.Submit(JobKind.Reset, d, async (job, ct) =>
        {
            if (Interlocked.Increment(ref running) > 1) overlapped = true;
            await Task.Yield();
            order.Enqueue(i);
            Interlocked.Decrement(ref running);
            return new JobResult();
        })).ToList();

        var gate = d.Gate.Snapshot();
        Assert.Same(first, gate.Holder);
        Assert.Equal(queued.Select(j => j.Id), gate.Queued.Select(j => j.Id));
        Assert.All(queued, j => Assert.Equal(JobState.Queued, j.State));

        holder.Release();
        foreach (var j in queued) await CoreHarness.FinishedAsync(j);

        Assert.Equal(Enumerable.Range(0, 12), order);
        Assert.False(overlapped, "two jobs of one domain ran at the same time");
        Assert.All(queued, j => Assert.Equal(JobState.Succeeded, j.State));
    }

    [Fact]
    public async Task QueuedJob_WhenItWaitsLongerThanWaitTimeout_FailsDomainBusyNamingTheHolder()
    {
        await using var h = new CoreHarness(jobs: o => o.WaitTimeout = TimeSpan.FromSeconds(30));
        var d = await h.DefineAsync("busy");
        var holder = new BlockingRunner();
        var holding = h.Submit(JobKind.Start, d, holder.Runner);
        await holder.WaitStartedAsync();
        var ran = false;
        var waiting = h.Submit(JobKind.Suspend, d, (_, _) => { ran = true; return Task.FromResult(new JobResult()); });

        h.Time.Advance(TimeSpan.FromSeconds(29));
        Assert.Equal(JobState.Queued, waiting.State);

        h.Time.Advance(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(waiting);

        Assert.Equal(JobState.Failed, waiting.State);
        Assert.Equal(ErrorCodes.DomainBusy, waiting.Error!.Code);
        Assert.Equal(409, waiting.Error.Status);
        Assert.Contains(holding.Id.ToString(), waiting.Error.Detail, StringComparison.Ordinal);
        Assert.Contains("start job", waiting.Error.Detail, StringComparison.Ordinal);
        Assert.Contains("30.0 s", waiting.Error.Detail, StringComparison.Ordinal); // the holder's age
        Assert.Empty(d.Gate.Snapshot().Queued);
        Assert.Equal(JobState.Running, holding.State);

        holder.Release();
        await CoreHarness.FinishedAsync(holding);
        Assert.Equal(JobState.Succeeded, holding.State);
        Assert.False(ran, "the timed-out job ran anyway");
    }

    [Fact]
    public async Task InlineRequest_WhenDomainStaysBusy_FailsDomainBusyNamingTheHolder()
    {
        await using var h = new CoreHarness(jobs: o => o.WaitTimeout = TimeSpan.FromSeconds(5));
        var d = await h.DefineAsync("busy-update");
        var holder = new BlockingRunner();
        var holding = h.Submit(JobKind.Reboot, d, holder.Runner);
        await holder.WaitStartedAsync();

        var update = h.Service.UpdateAsync("busy-update", d.Definition with { MemoryMiB = 512 }, null, CancellationToken.None);
        Assert.False(update.IsCompleted);
        h.Time.Advance(TimeSpan.FromSeconds(5));

        var e = await Assert.ThrowsAsync<VirtdException>(() => update.WaitAsync(CoreHarness.Patience));
        Assert.Equal(ErrorCodes.DomainBusy, e.Code);
        Assert.Contains(holding.Id.ToString(), e.Detail, StringComparison.Ordinal);
        Assert.Contains("reboot", e.Detail, StringComparison.Ordinal);
        Assert.Equal(64, d.Definition.MemoryMiB);
        Assert.Empty(d.Gate.Snapshot().Queued);

        // Once the holder is done, the next request gets the gate at once.
        holder.Release();
        await CoreHarness.FinishedAsync(holding);
        await CoreHarness.WaitUntilAsync(() => d.Gate.Snapshot().Holder is null, "the gate is free");
        await h.Service.UpdateAsync("busy-update", d.Definition with { MemoryMiB = 512 }, null, CancellationToken.None).WaitAsync(CoreHarness.Patience);
        Assert.Equal(512, d.Definition.MemoryMiB);
    }

    [Fact]
    public async Task Destroy_WhenSubmittedBehindAHungJob_SupersedesQueuedJobsCancelsTheHolderAndRuns()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("stuck");
        var hung = new BlockingRunner();
        // Suspend is not cancellable by the user, but destroy supersedes it anyway.
        var holding = h.Submit(JobKind.Suspend, d, hung.Runner);
        await hung.WaitStartedAsync();
        var queued = new[]
        {
            h.Service.Submit("stuck", new ResetCommand()),
            h.Service.Submit("stuck", new ShutdownCommand()),
            h.Service.Submit("stuck", new StartCommand()),
        };

        var destroy = h.Service.Submit("stuck", new DestroyCommand());

        Assert.All(queued, j =>
        {
            Assert.Equal(JobState.Superseded, j.State);
            Assert.Equal(ErrorCodes.Superseded, j.Error!.Code);
            Assert.Contains(destroy.Id.ToString(), j.Error.Detail, StringComparison.Ordinal);
        });
        await CoreHarness.FinishedAsync(destroy);
        await CoreHarness.FinishedAsync(holding);
        Assert.True(hung.TokenCancelled, "the holder's token was not cancelled");
        Assert.Equal(JobState.Superseded, holding.State);
        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.Equal(StopStage.Sigterm, destroy.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Destroyed, d.Runtime.Reason);
        Assert.Null(d.Instance);
    }

    /// <summary>
    /// The destroy's SIGTERM may end the VM at once, so by the time it goes out the running job must
    /// already know a destroy overtook it and the queued ones must be superseded (else the running job
    /// takes the exit for its own success and hands the gate to a queued one).
    /// </summary>
    [Fact]
    public async Task Destroy_SignalsOnlyAfterSupersedingAndBeforeItCanRun()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("ordered");
        var hung = new BlockingRunner();
        var holding = h.Submit(JobKind.Suspend, d, hung.Runner);
        await hung.WaitStartedAsync();
        var queued = h.Service.Submit("ordered", new ResetCommand());
        (Guid? HolderSupersededBy, JobState Queued)? atSignal = null;

        var destroy = h.Scheduler.Submit(new ObservedDestroy(() => atSignal = (holding.SupersededBy, queued.State)), d);

        Assert.NotNull(atSignal);
        Assert.Equal(destroy.Id, atSignal.Value.HolderSupersededBy);
        Assert.Equal(JobState.Superseded, atSignal.Value.Queued);
        await CoreHarness.FinishedAsync(destroy);
        Assert.Equal(JobState.Superseded, holding.State);
    }

    /// <summary>
    /// The destroy's SIGTERM ends an obedient VM at once. If it went out before the running shutdown was
    /// marked superseded, the shutdown could see the exit first, report "succeeded by acpi" and hand the
    /// gate to the queued suspend, which then failed instead of being superseded. Many rounds, several
    /// domains at once, so thread-pool timing gets its chances.
    /// </summary>
    [Fact]
    public async Task Destroy_DuringARunningShutdown_AlwaysSupersedesItAndTheQueuedJobs()
    {
        await using var h = new CoreHarness();
        async Task Rounds(string name)
        {
            var d = await h.DefineRunningAsync(name, new SimulationConfig { IgnoresAcpi = true });
            for (var i = 0; i < 25; i++)
            {
                if (i > 0) await h.RunAsync(name, new StartCommand());
                var shutdown = h.Service.Submit(name, new ShutdownCommand { Timeout = 600 });
                await CoreHarness.WaitUntilAsync(() => shutdown.State == JobState.Running && d.Runtime.State == DomainState.ShuttingDown, "the shutdown runs");
                var suspend = h.Service.Submit(name, new SuspendCommand());

                var destroy = await h.RunAsync(name, new DestroyCommand());

                await CoreHarness.FinishedAsync(shutdown);
                await CoreHarness.FinishedAsync(suspend);
                Assert.Equal(JobState.Succeeded, destroy.State);
                Assert.Equal(StopStage.Sigterm, destroy.Result!.StoppedBy);
                Assert.Equal(JobState.Superseded, shutdown.State);
                Assert.Equal(JobState.Superseded, suspend.State);
                Assert.Equal(DomainState.ShutOff, d.Runtime.State);
                Assert.Equal(StateReasons.Destroyed, d.Runtime.Reason);
            }
        }
        await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Task.Run(() => Rounds($"race-{i}"))));
    }

    [Fact]
    public async Task Destroy_WhenDefinitionRequestsAreQueued_KeepsThemBehindIt()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("keep-update");
        var hung = new BlockingRunner();
        var holding = h.Submit(JobKind.Reset, d, hung.Runner);
        await hung.WaitStartedAsync();
        var update = h.Service.UpdateAsync("keep-update", d.Definition with { Vcpus = 2 }, null, CancellationToken.None);
        var suspend = h.Service.Submit("keep-update", new SuspendCommand());

        var destroy = h.Service.Submit("keep-update", new DestroyCommand());

        Assert.Equal(JobState.Superseded, suspend.State);
        var updated = await update.WaitAsync(CoreHarness.Patience);
        await CoreHarness.FinishedAsync(destroy);
        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.Equal(2, updated.Definition.Vcpus);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        await CoreHarness.FinishedAsync(holding);
    }

    [Fact]
    public async Task Destroy_BypassesThePerDomainQueueLimit()
    {
        await using var h = new CoreHarness(jobs: o => o.PerDomainQueueLimit = 2);
        var d = await h.DefineRunningAsync("full");
        var hung = new BlockingRunner();
        h.Submit(JobKind.Reset, d, hung.Runner);
        await hung.WaitStartedAsync();
        h.Service.Submit("full", new ResetCommand());
        h.Service.Submit("full", new ResetCommand());
        var full = Assert.Throws<VirtdException>(() => h.Service.Submit("full", new ResetCommand()));
        Assert.Equal(ErrorCodes.QueueFull, full.Code);

        var destroy = h.Service.Submit("full", new DestroyCommand());

        await CoreHarness.FinishedAsync(destroy);
        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
    }

    [Fact]
    public async Task Destroy_BypassesTheGlobalQueueLimit()
    {
        await using var h = new CoreHarness(jobs: o => o.QueueLimit = 2);
        var busy = await h.DefineAsync("busy");
        var victim = await h.DefineRunningAsync("victim");
        var hung = new BlockingRunner();
        h.Submit(JobKind.Reset, busy, hung.Runner);
        await hung.WaitStartedAsync();
        h.Submit(JobKind.Reset, busy, hung.Runner);
        h.Submit(JobKind.Reset, busy, hung.Runner);
        var full = Assert.Throws<VirtdException>(() => h.Service.Submit("victim", new SuspendCommand()));
        Assert.Equal(ErrorCodes.QueueFull, full.Code);

        var destroy = h.Service.Submit("victim", new DestroyCommand());

        await CoreHarness.FinishedAsync(destroy);
        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.Equal(DomainState.ShutOff, victim.Runtime.State);
    }

    [Fact]
    public async Task Snapshot_ShowsTheHolderSinceWhenAndTheQueue()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("introspect");
        Assert.Null(d.Gate.Snapshot().Holder);
        var hung = new BlockingRunner();
        var since = h.Time.GetUtcNow();
        var holding = h.Submit(JobKind.Start, d, hung.Runner);
        await hung.WaitStartedAsync();
        h.Time.Advance(TimeSpan.FromSeconds(3));
        var waiting = h.Submit(JobKind.Reset, d, hung.Runner);

        var gate = d.Gate.Snapshot();

        Assert.Same(holding, gate.Holder);
        Assert.Equal(since, gate.HeldSince);
        Assert.Same(waiting, Assert.Single(gate.Queued));
        hung.Release();
        await CoreHarness.FinishedAsync(waiting);
    }
}

/// <summary>A real destroy that tells the test when its SIGTERM goes out.</summary>
internal sealed record ObservedDestroy(Action AtSignal) : JobCommand(JobKind.Destroy)
{
    private static readonly DestroyCommand Destroy = new();

    public override void Admitted(Job job, DomainLifecycle lifecycle)
    {
        AtSignal();
        Destroy.Admitted(job, lifecycle);
    }

    public override Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken cancellationToken) =>
        Destroy.RunAsync(job, lifecycle, cancellationToken);
}
