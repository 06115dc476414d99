using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Jobs;

public sealed class JobSchedulerTests
{
    private static readonly SimulationConfig HungMonitor = new() { HangMonitor = true };

    private static Task<JobResult> Quick(Job job, CancellationToken ct) => Task.FromResult(new JobResult());

    /// <summary>Starts a hangMonitor domain and leaves a suspend job hung on its monitor (the clock never reaches the monitor timeout).</summary>
    private static async Task<Job> HangAsync(CoreHarness h, string name)
    {
        await h.DefineRunningAsync(name, HungMonitor);
        var job = h.Service.Submit(name, new SuspendCommand());
        await CoreHarness.WaitUntilAsync(() => job.State == JobState.Running, $"the suspend of {name} runs");
        return job;
    }

    [Fact]
    public async Task HungDomain_WithAHundredQueuedJobs_DoesNotDelayAJobOnAnotherDomain()
    {
        await using var h = new CoreHarness(
            jobs: o => { o.Workers = 2; o.PerDomainQueueLimit = 200; },
            simulated: o => o.MonitorTimeout = TimeSpan.FromHours(1));
        var hung = await HangAsync(h, "hung");
        var queued = Enumerable.Range(0, 100)
            .Select(i => h.Service.Submit("hung", i % 2 == 0 ? new ResumeCommand() : new ResetCommand()))
            .ToList();
        await h.DefineAsync("other");

        var start = h.Service.Submit("other", new StartCommand());
        await CoreHarness.FinishedAsync(start, TimeSpan.FromSeconds(5));

        Assert.Equal(JobState.Succeeded, start.State);
        Assert.Equal(DomainState.Running, h.Service.Get("other").Runtime.State);
        Assert.Equal(JobState.Running, hung.State);
        Assert.All(queued, j => Assert.Equal(JobState.Queued, j.State));
        Assert.Equal(100, h.Service.Get("hung").Gate.QueueLength);
        // The other domain's jobs keep flowing while the hang lasts.
        var suspend = await h.RunAsync("other", new SuspendCommand());
        Assert.Equal(JobState.Succeeded, suspend.State);
        Assert.Equal(JobState.Running, hung.State);
    }

    [Fact]
    public async Task PriorityLane_WhenEveryNormalWorkerIsHung_DestroyStillRuns()
    {
        await using var h = new CoreHarness(
            jobs: o => { o.Workers = 2; o.PriorityWorkers = 1; },
            simulated: o => o.MonitorTimeout = TimeSpan.FromHours(1));
        var victim = await h.DefineRunningAsync("victim");
        var hungA = await HangAsync(h, "hung-a");
        var hungB = await HangAsync(h, "hung-b");
        await h.DefineAsync("waiting");
        var starved = h.Service.Submit("waiting", new StartCommand());

        var destroy = h.Service.Submit("victim", new DestroyCommand());
        await CoreHarness.FinishedAsync(destroy, TimeSpan.FromSeconds(5));

        Assert.Equal(JobState.Succeeded, destroy.State);
        Assert.Equal(DomainState.ShutOff, victim.Runtime.State);
        // Proof that every normal worker was busy: the start is still waiting for one.
        Assert.Equal(JobState.Queued, starved.State);
        Assert.Equal(JobState.Running, hungA.State);
        Assert.Equal(JobState.Running, hungB.State);

        // Destroy also works on a domain whose own job hangs a normal worker.
        var destroyHung = h.Service.Submit("hung-a", new DestroyCommand());
        await CoreHarness.FinishedAsync(destroyHung);
        await CoreHarness.FinishedAsync(hungA);
        Assert.Equal(JobState.Succeeded, destroyHung.State);
        Assert.Equal(JobState.Superseded, hungA.State);
        // That freed a normal worker, so the starved start runs now.
        await CoreHarness.FinishedAsync(starved);
        Assert.Equal(JobState.Succeeded, starved.State);
    }

    [Fact]
    public async Task Submit_WhenGlobalQueueIsFull_FailsQueueFullWith429AndRetryAfter()
    {
        await using var h = new CoreHarness(jobs: o => o.QueueLimit = 3);
        var a = await h.DefineAsync("a");
        await h.DefineAsync("b");
        var hung = new BlockingRunner();
        h.Submit(JobKind.Start, a, hung.Runner);
        await hung.WaitStartedAsync();
        var queued = Enumerable.Range(0, 3).Select(_ => h.Submit(JobKind.Reset, a, Quick)).ToList();

        var e = Assert.Throws<VirtdException>(() => h.Service.Submit("b", new StartCommand()));

        Assert.Equal(ErrorCodes.QueueFull, e.Code);
        Assert.Equal(429, e.Status);
        Assert.True(e.RetryAfterSeconds >= 1, $"Retry-After is {e.RetryAfterSeconds}");
        Assert.Contains("Jobs:QueueLimit", e.Detail, StringComparison.Ordinal);
        Assert.Equal(3, h.Scheduler.QueuedCount);

        // A rejected submit leaves no trace in the count: one slot freed, one job fits again.
        Assert.True(h.Scheduler.Cancel(queued[0], "test"));
        var start = h.Service.Submit("b", new StartCommand());
        await CoreHarness.FinishedAsync(start);
        Assert.Equal(JobState.Succeeded, start.State);
    }

    [Fact]
    public async Task Submit_WhenDomainQueueIsFull_FailsQueueFullWith429ButOtherDomainsStillQueue()
    {
        await using var h = new CoreHarness(jobs: o => o.PerDomainQueueLimit = 2);
        var a = await h.DefineAsync("a");
        await h.DefineAsync("b");
        var hung = new BlockingRunner();
        h.Submit(JobKind.Start, a, hung.Runner);
        await hung.WaitStartedAsync();
        h.Submit(JobKind.Reset, a, Quick);
        h.Submit(JobKind.Reset, a, Quick);

        var e = Assert.Throws<VirtdException>(() => h.Service.Submit("a", new StartCommand()));

        Assert.Equal(ErrorCodes.QueueFull, e.Code);
        Assert.Equal(429, e.Status);
        Assert.NotNull(e.RetryAfterSeconds);
        Assert.True(e.RetryAfterSeconds > 0);
        Assert.Contains("Jobs:PerDomainQueueLimit", e.Detail, StringComparison.Ordinal);
        Assert.Equal(2, a.Gate.QueueLength);
        var other = await h.RunAsync("b", new StartCommand());
        Assert.Equal(JobState.Succeeded, other.State);
    }

    [Fact]
    public async Task Cancel_WhenJobIsQueued_EndsItCancelledAndItNeverRuns()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("c");
        var hung = new BlockingRunner();
        var holder = h.Submit(JobKind.Start, d, hung.Runner);
        await hung.WaitStartedAsync();
        var ran = false;
        var victim = h.Submit(JobKind.Reset, d, (_, _) => { ran = true; return Task.FromResult(new JobResult()); });
        var after = h.Submit(JobKind.Reset, d, Quick);

        Assert.True(h.Scheduler.Cancel(victim, "user asked"));

        Assert.Equal(JobState.Cancelled, victim.State);
        Assert.Equal(ErrorCodes.Cancelled, victim.Error!.Code);
        Assert.Contains("user asked", victim.Error.Detail, StringComparison.Ordinal);
        Assert.True(victim.Finished.IsCompleted);
        Assert.Same(after, Assert.Single(d.Gate.Snapshot().Queued));
        hung.Release();
        await CoreHarness.FinishedAsync(after);
        Assert.Equal(JobState.Succeeded, holder.State);
        Assert.Equal(JobState.Succeeded, after.State);
        Assert.False(ran, "a cancelled job ran");
        var e = Assert.Throws<VirtdException>(() => h.Scheduler.Cancel(victim, "again"));
        Assert.Equal(ErrorCodes.InvalidState, e.Code);
    }

    [Fact]
    public async Task Cancel_WhenRunningJobIsNotCancellable_ReturnsFalseAndLetsItRun()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("nc");
        var hung = new BlockingRunner();
        var job = h.Submit(JobKind.Suspend, d, hung.Runner);
        await hung.WaitStartedAsync();

        Assert.False(h.Scheduler.Cancel(job, "user asked"));

        Assert.Equal(JobState.Running, job.State);
        Assert.False(job.Token.IsCancellationRequested);
        hung.Release();
        await CoreHarness.FinishedAsync(job);
        Assert.Equal(JobState.Succeeded, job.State);
    }

    [Fact]
    public async Task Cancel_WhenStartIsBooting_EndsCancelledAndLeavesNothingRunning()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("slow-boot", new SimulationConfig { BootDelayMs = 60_000 });
        var start = h.Service.Submit("slow-boot", new StartCommand());
        await CoreHarness.WaitUntilAsync(() => h.Driver.Info.RunningVms == 1, "the VM is booting");

        Assert.True(h.Scheduler.Cancel(start, "user asked"));
        await CoreHarness.FinishedAsync(start);

        Assert.Equal(JobState.Cancelled, start.State);
        Assert.Equal(ErrorCodes.Cancelled, start.Error!.Code);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Null(d.Instance);
        Assert.Equal(0, h.Driver.Info.RunningVms);
    }

    [Fact]
    public async Task BeginShutdown_CancelsQueuedJobsAndRunningJobsTokensAndRefusesNewOnes()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("s");
        var hung = new BlockingRunner();
        var running = h.Submit(JobKind.Suspend, d, hung.Runner);
        await hung.WaitStartedAsync();
        var queued = Enumerable.Range(0, 3).Select(_ => h.Submit(JobKind.Reset, d, Quick)).ToList();

        h.Scheduler.BeginShutdown();

        Assert.All(queued, j =>
        {
            Assert.Equal(JobState.Cancelled, j.State);
            Assert.Contains("shutting down", j.Error!.Detail, StringComparison.Ordinal);
        });
        await CoreHarness.FinishedAsync(running);
        Assert.True(hung.TokenCancelled);
        Assert.Equal(JobState.Cancelled, running.State);
        Assert.Contains("shutting down", running.Error!.Detail, StringComparison.Ordinal);
        var e = Assert.Throws<VirtdException>(() => h.Service.Submit("s", new StartCommand()));
        Assert.Equal(ErrorCodes.ShuttingDown, e.Code);
        Assert.Equal(503, e.Status);
        Assert.NotNull(e.RetryAfterSeconds);
        await h.Scheduler.DrainAsync(CancellationToken.None).WaitAsync(CoreHarness.Patience);
        Assert.Equal(0, h.Scheduler.QueuedCount);
        Assert.Equal(0, h.Scheduler.RunningCount);
    }

    [Fact]
    public async Task EveryJob_PublishesQueuedStartedFinishedInOrder()
    {
        // Rounds of concurrent submits on one gate, each starting from an empty queue: a job queued just
        // as the holder releases is where job.started could overtake job.queued.
        const int Rounds = 40, Threads = 4, PerThread = 100;
        await using var h = new CoreHarness(
            jobs: o => { o.QueueLimit = 100_000; o.PerDomainQueueLimit = 100_000; o.Workers = 4; },
            events: o => o.SubscriberQueue = 200_000);
        var busy = await h.DefineAsync("e0");
        await h.DefineAsync("e1");
        using var sub = h.Bus.Subscribe(new EventFilter([], ["job."]), null);

        var jobs = new List<Job>();
        for (var round = 0; round < Rounds; round++)
        {
            var submitted = await Task.WhenAll(Enumerable.Range(0, Threads).Select(_ => Task.Run(() =>
                Enumerable.Range(0, PerThread).Select(_ => h.Submit(JobKind.Reset, busy, Quick)).ToList())));
            var batch = submitted.SelectMany(x => x).ToList();
            foreach (var j in batch) await CoreHarness.FinishedAsync(j);
            jobs.AddRange(batch);
        }
        jobs.Add(await h.RunAsync("e1", new StartCommand()));
        jobs.Add(await h.RunAsync("e1", new DestroyCommand()));

        var events = new Dictionary<Guid, List<(string Type, JobState State)>>();
        using var cts = new CancellationTokenSource(CoreHarness.Patience);
        for (var n = 0; n < jobs.Count * 3; n++)
        {
            var e = await sub.Reader.ReadAsync(cts.Token);
            var data = (JobEventData)e.Data;
            if (!events.TryGetValue(data.JobId, out var list)) events[data.JobId] = list = [];
            list.Add((e.Type, data.State));
        }

        var wrong = jobs.Where(j => !events[j.Id].SequenceEqual(
            [(EventTypes.JobQueued, JobState.Queued), (EventTypes.JobStarted, JobState.Running), (EventTypes.JobFinished, JobState.Succeeded)])).ToList();
        if (wrong.Count > 0)
            Assert.Fail($"{wrong.Count} of {jobs.Count} jobs published out of order, e.g. {string.Join(" → ", events[wrong[0].Id].Select(e => e.Type))}");
        Assert.False(sub.Overflowed);
    }
    [Fact]
    public async Task AJobThatFailsUnexpectedly_SaysSoWithoutTypeNamesStackTracesOrHostPaths()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("oops");

        var job = h.Submit(JobKind.Reset, d, (_, _) => throw new InvalidOperationException("Could not find file '/var/lib/virtd/secret/thing'"));
        await CoreHarness.FinishedAsync(job);

        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("internal", job.Error!.Code);
        Assert.Contains(job.Id.ToString(), job.Error.Detail);
        Assert.DoesNotContain("/var/lib", job.Error.Detail);
        Assert.DoesNotContain("Exception", job.Error.Detail);
        Assert.DoesNotContain(" at ", job.Error.Detail);
    }
}
