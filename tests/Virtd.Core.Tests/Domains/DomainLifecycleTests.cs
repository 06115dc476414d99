using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Testing;

namespace Virtd.Core.Tests.Domains;

/// <summary>Actions through DomainService.Submit on the simulated driver, timeouts driven by the manual clock.</summary>
public sealed class DomainLifecycleTests
{
    private static readonly SimulationConfig IgnoresAcpi = new() { IgnoresAcpi = true };
    private static readonly SimulationConfig IgnoresSigterm = new() { IgnoresSigterm = true };

    private static void AssertSucceeded(Job job)
    {
        Assert.True(job.State == JobState.Succeeded, $"{job} ended {job.State}: {job.Error?.Code} {job.Error?.Detail}");
        Assert.NotEqual(true, job.Result?.Noop);
    }

    private static void AssertNoop(Job job)
    {
        Assert.True(job.State == JobState.Succeeded, $"{job} ended {job.State}: {job.Error?.Code} {job.Error?.Detail}");
        Assert.True(job.Result!.Noop);
        Assert.Null(job.Result.StoppedBy);
    }

    private static void AssertFailed(Job job, string code)
    {
        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal(code, job.Error!.Code);
    }

    private static async Task<List<string?>> LifecycleEvents(EventBus.Subscription sub, int count)
    {
        var events = new List<string?>();
        using var cts = new CancellationTokenSource(CoreHarness.Patience);
        while (events.Count < count)
        {
            var e = await sub.Reader.ReadAsync(cts.Token);
            events.Add(((DomainEventData)e.Data).Event);
        }
        return events;
    }

    [Fact]
    public async Task StartSuspendResumeDestroy_MoveTheDomainThroughItsStates()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("life");
        using var sub = h.Bus.Subscribe(new EventFilter(["life"], [EventTypes.DomainLifecycle]), null);

        var start = await h.RunAsync("life", new StartCommand());
        AssertSucceeded(start);
        Assert.Equal(DomainState.Running, d.Runtime.State);
        Assert.Equal(StateReasons.Booted, d.Runtime.Reason);
        Assert.NotNull(d.Runtime.Pid);
        Assert.NotNull(d.Runtime.StartedAt);
        Assert.Equal(1, h.Driver.Info.RunningVms);

        AssertSucceeded(await h.RunAsync("life", new SuspendCommand()));
        Assert.Equal(DomainState.Paused, d.Runtime.State);

        AssertSucceeded(await h.RunAsync("life", new ResumeCommand()));
        Assert.Equal(DomainState.Running, d.Runtime.State);

        var destroy = await h.RunAsync("life", new DestroyCommand());
        AssertSucceeded(destroy);
        Assert.Equal(StopStage.Sigterm, destroy.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Destroyed, d.Runtime.Reason);
        Assert.Null(d.Instance);
        Assert.Null(d.Runtime.Pid);
        Assert.Equal(0, h.Driver.Info.RunningVms);

        Assert.Equal(["started", "suspended", "resumed", "destroyed"], await LifecycleEvents(sub, 4));
    }

    [Fact]
    public async Task Start_WhenAlreadyRunning_SucceedsAsNoopAndKeepsTheSameVm()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("noop-start");
        var vm = d.Instance;

        AssertNoop(await h.RunAsync("noop-start", new StartCommand()));

        Assert.Same(vm, d.Instance);
        Assert.Equal(DomainState.Running, d.Runtime.State);
    }

    [Fact]
    public async Task Suspend_WhenPaused_SucceedsAsNoop()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("noop-suspend");
        AssertSucceeded(await h.RunAsync("noop-suspend", new SuspendCommand()));

        AssertNoop(await h.RunAsync("noop-suspend", new SuspendCommand()));

        Assert.Equal(DomainState.Paused, d.Runtime.State);
    }

    [Fact]
    public async Task Resume_WhenRunning_SucceedsAsNoop()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("noop-resume");

        AssertNoop(await h.RunAsync("noop-resume", new ResumeCommand()));

        Assert.Equal(DomainState.Running, d.Runtime.State);
    }

    [Theory]
    [InlineData(JobKind.Destroy)]
    [InlineData(JobKind.Shutdown)]
    public async Task Stop_WhenShutOff_SucceedsAsNoop(JobKind action)
    {
        await using var h = new CoreHarness();
        var d = await h.DefineAsync("noop-stop");

        AssertNoop(await h.RunAsync("noop-stop", CoreHarness.Command(action)));

        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Defined, d.Runtime.Reason);
    }

    [Theory]
    [InlineData(JobKind.Suspend, false)]
    [InlineData(JobKind.Resume, false)]
    [InlineData(JobKind.Reset, false)]
    [InlineData(JobKind.Reboot, false)]
    [InlineData(JobKind.Start, true)]
    [InlineData(JobKind.Reboot, true)]
    public async Task Submit_WhenTransitionIsImpossible_FailsInvalidStateWithoutQueueingAJob(JobKind action, bool paused)
    {
        await using var h = new CoreHarness();
        var d = paused ? await h.DefineRunningAsync("nope") : await h.DefineAsync("nope");
        if (paused) AssertSucceeded(await h.RunAsync("nope", new SuspendCommand()));
        var state = d.Runtime.State;
        var jobs = h.Jobs.Count;

        var e = Assert.Throws<VirtdException>(() => h.Service.Submit("nope", CoreHarness.Command(action)));

        Assert.Equal(ErrorCodes.InvalidState, e.Code);
        Assert.Equal(409, e.Status);
        Assert.Equal(jobs, h.Jobs.Count);
        Assert.Equal(state, d.Runtime.State);
    }

    [Fact]
    public async Task Submit_WhenDomainIsUnknown_FailsDomainNotFound()
    {
        await using var h = new CoreHarness();
        var e = Assert.Throws<VirtdException>(() => h.Service.Submit("ghost", new StartCommand()));
        Assert.Equal(ErrorCodes.DomainNotFound, e.Code);
    }

    [Fact]
    public async Task Shutdown_WhenGuestObeysAcpi_StopsByAcpi()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("acpi");

        var job = await h.RunAsync("acpi", new ShutdownCommand());

        AssertSucceeded(job);
        Assert.Equal(StopStage.Acpi, job.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Shutdown, d.Runtime.Reason);
    }

    [Fact]
    public async Task Shutdown_WhenGuestTakesTimeToPowerOff_WaitsForIt()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("slow-acpi", new SimulationConfig { AcpiShutdownDelayMs = 3000 });

        var job = h.Service.Submit("slow-acpi", new ShutdownCommand { Timeout = 60 });
        // The guest's own power-off timer and the job's 60 s deadline.
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(2), timers: 2);
        Assert.Equal(DomainState.ShuttingDown, d.Runtime.State);
        h.Time.Advance(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(job);

        AssertSucceeded(job);
        Assert.Equal(StopStage.Acpi, job.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
    }

    [Fact]
    public async Task Shutdown_WhenGuestIgnoresAcpi_FailsShutdownTimeoutAndLeavesItRunning()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("deaf", IgnoresAcpi);
        var vm = d.Instance!;

        var job = h.Service.Submit("deaf", new ShutdownCommand { Timeout = 5 });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(4));
        Assert.Equal(JobState.Running, job.State);
        Assert.Equal(DomainState.ShuttingDown, d.Runtime.State);
        h.Time.Advance(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(job);

        AssertFailed(job, ErrorCodes.ShutdownTimeout);
        Assert.Equal(DomainState.Running, d.Runtime.State);
        Assert.Same(vm, d.Instance);
        Assert.False(vm.Exited.IsCompleted);
    }

    [Fact]
    public async Task Shutdown_WhenGuestIgnoresAcpiAndForce_StopsBySigterm()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("deaf-force", IgnoresAcpi);

        var job = h.Service.Submit("deaf-force", new ShutdownCommand { Timeout = 5, Force = true });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(5));
        await CoreHarness.FinishedAsync(job);

        AssertSucceeded(job);
        Assert.Equal(StopStage.Sigterm, job.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Destroyed, d.Runtime.Reason);
    }

    [Fact]
    public async Task Shutdown_WhenForcedAndProcessAlsoIgnoresSigterm_StopsBySigkill()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("wedged", new SimulationConfig { IgnoresAcpi = true, IgnoresSigterm = true });

        var job = h.Service.Submit("wedged", new ShutdownCommand { Timeout = 5, Force = true });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(5));
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(DestroyCommand.DefaultTimeout));
        await CoreHarness.FinishedAsync(job);

        AssertSucceeded(job);
        Assert.Equal(StopStage.Sigkill, job.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
    }

    [Fact]
    public async Task Destroy_WhenProcessIgnoresSigterm_KillsItAfterTheTimeout()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("stubborn", IgnoresSigterm);

        var job = h.Service.Submit("stubborn", new DestroyCommand());
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(DestroyCommand.DefaultTimeout - 1));
        Assert.Equal(JobState.Running, job.State);
        Assert.Equal(DomainState.Running, d.Runtime.State);
        h.Time.Advance(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(job);

        AssertSucceeded(job);
        Assert.Equal(StopStage.Sigkill, job.Result!.StoppedBy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
        Assert.Equal(StateReasons.Destroyed, d.Runtime.Reason);
    }

    [Fact]
    public async Task Destroy_WhenGracefulAndProcessIgnoresSigterm_FailsWithoutKilling()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("precious", IgnoresSigterm);
        var vm = d.Instance!;

        var job = h.Service.Submit("precious", new DestroyCommand { Graceful = true, Timeout = 3 });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(3));
        await CoreHarness.FinishedAsync(job);

        AssertFailed(job, ErrorCodes.DestroyTimeout);
        Assert.Equal(504, job.Error!.Status);
        Assert.Equal(DomainState.Running, d.Runtime.State);
        Assert.Same(vm, d.Instance);
        Assert.False(vm.Exited.IsCompleted, "a graceful destroy killed the process");
        Assert.Equal(StopIntent.None, d.Gate.StopIntent);

        // The domain is left as it was: a plain destroy still works afterwards.
        var again = h.Service.Submit("precious", new DestroyCommand { Timeout = 1 });
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(again);
        Assert.Equal(StopStage.Sigkill, again.Result!.StoppedBy);
    }

    [Fact]
    public async Task Suspend_WhenMonitorHangs_FailsMonitorTimeoutAndFreesTheDomain()
    {
        await using var h = new CoreHarness(simulated: o => o.MonitorTimeout = TimeSpan.FromSeconds(10));
        var d = await h.DefineRunningAsync("hung", new SimulationConfig { HangMonitor = true });

        var job = h.Service.Submit("hung", new SuspendCommand());
        await h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(9));
        Assert.Equal(JobState.Running, job.State);
        h.Time.Advance(TimeSpan.FromSeconds(1));
        await CoreHarness.FinishedAsync(job);

        AssertFailed(job, ErrorCodes.MonitorTimeout);
        Assert.Equal(504, job.Error!.Status);
        Assert.Equal(DomainState.Running, d.Runtime.State);
        // The gate was released: the next job runs, and destroy of the hung VM works.
        var destroy = await h.RunAsync("hung", new DestroyCommand());
        AssertSucceeded(destroy);
        Assert.Equal(DomainState.ShutOff, d.Runtime.State);
    }

    [Fact]
    public async Task Crash_WhenOnCrashIsRestart_StartsTheDomainAgain()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("phoenix", edit: def => def with { OnCrash = LifecycleAction.Restart });
        var first = d.Instance!;
        using var sub = h.Bus.Subscribe(new EventFilter(["phoenix"], [EventTypes.DomainLifecycle]), null);

        first.Signal(VmSignal.Kill); // killed from outside the job system

        Assert.Equal(["crashed", "started"], await LifecycleEvents(sub, 2));
        await CoreHarness.WaitUntilAsync(() => d.Runtime.State == DomainState.Running, "the domain runs again");
        Assert.NotNull(d.Instance);
        Assert.NotSame(first, d.Instance);
        Assert.NotEqual(first.Pid, d.Runtime.Pid);
        // The restart is an ordinary start job, visible in the job list.
        Assert.Equal(2, h.Jobs.List(j => j.Kind == JobKind.Start && j.Domain == d).Count);
    }

    [Fact]
    public async Task Crash_WhenOnCrashIsDestroy_LeavesTheDomainCrashed()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("fallen");
        var startJobs = h.Jobs.List(j => j.Kind == JobKind.Start).Count;

        d.Instance!.Signal(VmSignal.Kill);

        Assert.Equal(DomainState.Crashed, d.Runtime.State);
        Assert.StartsWith(StateReasons.Crashed, d.Runtime.Reason, StringComparison.Ordinal);
        Assert.Null(d.Instance);
        Assert.Equal(startJobs, h.Jobs.List(j => j.Kind == JobKind.Start).Count);
        // A crashed domain can be started again by hand.
        AssertSucceeded(await h.RunAsync("fallen", new StartCommand()));
    }

    [Fact]
    public async Task Reboot_WhenOnRebootIsRestart_KeepsRunning()
    {
        await using var h = new CoreHarness();
        var d = await h.DefineRunningAsync("reboot");
        var vm = d.Instance;

        AssertSucceeded(await h.RunAsync("reboot", new RebootCommand()));

        Assert.Equal(DomainState.Running, d.Runtime.State);
        Assert.Same(vm, d.Instance);
    }

    [Fact]
    public async Task Undefine_WhenRunning_FailsDomainActive()
    {
        await using var h = new CoreHarness();
        await h.DefineRunningAsync("busy-vm");

        var e = await Assert.ThrowsAsync<VirtdException>(() => h.Service.UndefineAsync("busy-vm", null, CancellationToken.None));

        Assert.Equal(ErrorCodes.DomainActive, e.Code);
        Assert.NotNull(h.Registry.Find("busy-vm"));
        Assert.True(File.Exists(h.Store.PathOf("busy-vm")));
    }
}
