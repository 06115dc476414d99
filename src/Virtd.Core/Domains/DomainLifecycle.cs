using Microsoft.Extensions.Logging;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Core.Domains;

/// <summary>
/// What each action job does, and what happens when a VM exits on its own. Driver-independent:
/// the stop contract of seed 001 (SIGTERM, wait, SIGKILL unless graceful) lives here once for every driver.
/// Each runner reads as one line: re-check state → driver call → record state.
/// </summary>
public sealed class DomainLifecycle(DriverCatalog drivers, TimeProvider time, ILogger<DomainLifecycle> log) : IVmHost
{
    /// <summary>How long to wait for death after SIGKILL before calling it a hypervisor error.</summary>
    public static readonly TimeSpan KillConfirmTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Set by the service: submits a start job when a domain must restart after an exit.</summary>
    internal Action<DomainObject>? RestartRequested { get; set; }

    /// <summary>Destroy's own state: when SIGTERM was sent (before the job took the gate) and to which VM.</summary>
    public sealed class DestroyState(DestroyRequest request)
    {
        public DestroyRequest Request { get; } = request;
        public IVmInstance? Signalled { get; set; }
        public DateTimeOffset SignalledAt { get; set; }
    }

    public JobRunner RunnerFor(JobKind kind) => kind switch
    {
        JobKind.Start => StartAsync,
        JobKind.Shutdown => ShutdownAsync,
        JobKind.Reboot => RebootAsync,
        JobKind.Reset => ResetAsync,
        JobKind.Suspend => SuspendAsync,
        JobKind.Resume => ResumeAsync,
        JobKind.Destroy => DestroyAsync,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not an action"),
    };

    /// <summary>Destroy signals first, before it waits for the gate: a running job then fails fast.</summary>
    public void SignalEarly(DomainObject domain, DestroyState state)
    {
        var vm = domain.Instance;
        if (vm is null || vm.Exited.IsCompleted) return;
        domain.PendingStop = StopIntent.Destroy;
        state.Signalled = vm;
        state.SignalledAt = time.GetUtcNow();
        vm.Signal(VmSignal.Term);
    }

    private async Task<JobResult> StartAsync(Job job, CancellationToken ct)
    {
        var d = job.Domain;
        var view = d.View;
        if (view.Runtime.State == DomainState.Paused)
            throw VirtdException.InvalidState($"domain '{d.Name}' is paused; resume it instead");
        if (view.Runtime.IsActive) return new JobResult { Noop = true, State = view.Runtime.State };

        var definition = view.Definition;
        var driver = drivers.Require(definition.Driver ?? DriverKind.Simulated);
        d.PendingStop = StopIntent.None;
        var vm = await driver.LaunchAsync(d, definition, new Sink(this, d), ct).ConfigureAwait(false);
        d.Attach(vm, definition, DomainState.Running, StateReasons.Booted, "started", time.GetUtcNow());
        if (vm.Exited.IsCompleted) OnExited(d, vm, await vm.Exited.ConfigureAwait(false)); // died before we attached it
        return new JobResult { State = d.Runtime.State };
    }

    private Task<JobResult> SuspendAsync(Job job, CancellationToken ct) =>
        PauseOrResumeAsync(job.Domain, "suspend", DomainState.Running, DomainState.Paused, StateReasons.User, "suspended", vm => vm.PauseAsync(ct));

    private Task<JobResult> ResumeAsync(Job job, CancellationToken ct) =>
        PauseOrResumeAsync(job.Domain, "resume", DomainState.Paused, DomainState.Running, StateReasons.Unpaused, "resumed", vm => vm.ResumeAsync(ct));

    /// <summary>Suspend and resume: noop when already there, else the monitor command, then the new state.</summary>
    private async Task<JobResult> PauseOrResumeAsync(DomainObject d, string action, DomainState from, DomainState to, string reason,
        string lifecycleEvent, Func<IVmInstance, Task> command)
    {
        var view = d.View;
        if (view.Instance is not null && view.Runtime.State == to) return new JobResult { Noop = true, State = to };
        var vm = RequireRunning(d, action, from);
        await command(vm).ConfigureAwait(false);
        d.Transition(vm, to, reason, lifecycleEvent, time.GetUtcNow());
        return new JobResult { State = d.Runtime.State };
    }

    private async Task<JobResult> ResetAsync(Job job, CancellationToken ct)
    {
        var d = job.Domain;
        var vm = RequireRunning(d, "reset", DomainState.Running, DomainState.Paused);
        await vm.ResetAsync(ct).ConfigureAwait(false);
        d.Announce(vm, "reset");
        return new JobResult { State = d.Runtime.State };
    }

    private async Task<JobResult> RebootAsync(Job job, CancellationToken ct)
    {
        var d = job.Domain;
        var vm = RequireRunning(d, "reboot", DomainState.Running);
        if (d.Definition.OnReboot == LifecycleAction.Destroy) d.PendingStop = StopIntent.Restart;
        try
        {
            await vm.RebootAsync(ct).ConfigureAwait(false);
            if (!vm.Exited.IsCompleted) d.Announce(vm, "rebooted");
            return new JobResult { State = d.Runtime.State };
        }
        finally
        {
            // A guest that did not go down (it ignored the button): a later exit is not this reboot's.
            if (!vm.Exited.IsCompleted) d.ClearPendingStop(StopIntent.Restart);
        }
    }

    private async Task<JobResult> ShutdownAsync(Job job, CancellationToken ct)
    {
        var d = job.Domain;
        var request = (ShutdownRequest?)job.Args ?? new ShutdownRequest();
        var view = d.View;
        var vm = view.Instance;
        var before = view.Runtime.State;
        if (vm is null) return new JobResult { Noop = true, State = before };

        var timeout = TimeSpan.FromSeconds(request.Timeout ?? ShutdownRequest.DefaultTimeout);
        var done = false;
        try
        {
            var stage = await PowerOffAsync(d, vm, timeout, request.Force, powerdownFailureEscalates: false, DateTimeOffset.MaxValue, ct)
                .ConfigureAwait(false);
            if (stage is null)
            {
                throw new VirtdException(ErrorCodes.ShutdownTimeout, 504, "Shutdown timeout",
                    $"domain '{d.Name}' did not power off within {timeout.TotalSeconds:0.###} s of the ACPI power button; it is still running");
            }
            done = true;
            return await StoppedAsync(d, vm, stage.Value).ConfigureAwait(false);
        }
        finally
        {
            if (!done && !vm.Exited.IsCompleted)
            {
                d.ClearPendingStop(StopIntent.Shutdown);
                if (d.Runtime.State == DomainState.ShuttingDown)
                    d.Transition(vm, before, StateReasons.User, "shutdown-failed", time.GetUtcNow());
            }
        }
    }

    /// <summary>
    /// The ACPI power button, then up to <paramref name="acpiTimeout"/> for the guest to power off; with
    /// <paramref name="force"/>, destroy after that (SIGTERM, then SIGKILL after the destroy timeout, or at
    /// <paramref name="killBy"/> if sooner). Returns the stage that stopped the VM, or null when the guest stayed
    /// up and <paramref name="force"/> is off. A failed button press escalates at once when
    /// <paramref name="powerdownFailureEscalates"/>, else it fails the caller.
    /// </summary>
    private async Task<StopStage?> PowerOffAsync(DomainObject d, IVmInstance vm, TimeSpan acpiTimeout, bool force, bool powerdownFailureEscalates,
        DateTimeOffset killBy, CancellationToken ct)
    {
        var deadline = time.GetUtcNow() + acpiTimeout;
        d.PendingStop = StopIntent.Shutdown;
        d.Transition(vm, DomainState.ShuttingDown, StateReasons.Acpi, "shutting-down", time.GetUtcNow());
        try
        {
            await vm.PowerdownAsync(ct).ConfigureAwait(false);
        }
        catch (VirtdException e) when (powerdownFailureEscalates)
        {
            log.LogWarning("domain {Domain}: ACPI power button failed ({Detail}); destroying it", d.Name, e.Detail);
            deadline = time.GetUtcNow();
        }
        if (await WaitForExitAsync(vm, deadline - time.GetUtcNow(), ct).ConfigureAwait(false)) return StopStage.Acpi;
        if (!force) return null;
        log.LogWarning("domain {Domain}: not powered off within {Timeout}; destroying it", d.Name, acpiTimeout);
        d.PendingStop = StopIntent.Destroy;
        vm.Signal(VmSignal.Term);
        var killAt = time.GetUtcNow() + TimeSpan.FromSeconds(DestroyRequest.DefaultTimeout);
        return await TerminateAsync(d, vm, killAt < killBy ? killAt : killBy, graceful: false, ct).ConfigureAwait(false);
    }

    private async Task<JobResult> DestroyAsync(Job job, CancellationToken ct)
    {
        var d = job.Domain;
        var state = (DestroyState)job.Args!;
        var request = state.Request;
        var view = d.View;
        var vm = view.Instance;
        if (vm is null)
        {
            // The SIGTERM sent before queueing may have ended the VM already: then this destroy stopped it.
            if (state.Signalled is { Exited.IsCompleted: true } gone) return await StoppedAsync(d, gone, StopStage.Sigterm).ConfigureAwait(false);
            return new JobResult { Noop = true, State = view.Runtime.State };
        }

        var timeout = TimeSpan.FromSeconds(request.Timeout ?? DestroyRequest.DefaultTimeout);
        if (!ReferenceEquals(state.Signalled, vm))
        {
            d.PendingStop = StopIntent.Destroy;
            state.Signalled = vm;
            state.SignalledAt = time.GetUtcNow();
            vm.Signal(VmSignal.Term);
        }
        d.PendingStop = StopIntent.Destroy;
        var stage = await TerminateAsync(d, vm, state.SignalledAt + timeout, request.Graceful, ct).ConfigureAwait(false);
        return await StoppedAsync(d, vm, stage).ConfigureAwait(false);
    }

    /// <summary>
    /// The daemon stops with <c>Guests:OnDaemonStop=shutdown</c>: ACPI power button, up to <paramref name="acpiTimeout"/>
    /// for the guest to power off, then destroy (SIGTERM, then SIGKILL by <paramref name="deadline"/>). Runs outside
    /// the job queue, which no longer takes jobs; returns which stage stopped the VM, or null when none ran.
    /// </summary>
    public async Task<StopStage?> StopForDaemonAsync(DomainObject d, TimeSpan acpiTimeout, DateTimeOffset deadline, CancellationToken ct)
    {
        var vm = d.Instance;
        if (vm is null || vm.Exited.IsCompleted) return null;
        // With force it always ends in a stage (or throws).
        var stage = (await PowerOffAsync(d, vm, acpiTimeout, force: true, powerdownFailureEscalates: true, deadline, ct).ConfigureAwait(false))!.Value;
        await StoppedAsync(d, vm, stage).ConfigureAwait(false);
        return stage;
    }

    /// <summary>SIGTERM has been sent: wait until <paramref name="deadline"/>, then SIGKILL unless graceful.</summary>
    private async Task<StopStage> TerminateAsync(DomainObject d, IVmInstance vm, DateTimeOffset deadline, bool graceful, CancellationToken ct)
    {
        if (await WaitForExitAsync(vm, deadline - time.GetUtcNow(), ct).ConfigureAwait(false)) return StopStage.Sigterm;
        if (graceful)
        {
            d.ClearPendingStop(StopIntent.Destroy);
            throw new VirtdException(ErrorCodes.DestroyTimeout, 504, "Destroy timeout",
                $"process {vm.Pid} of domain '{d.Name}' is still alive after SIGTERM; a graceful destroy never sends SIGKILL, so the domain was left as it was");
        }
        log.LogWarning("domain {Domain}: process {Pid} survived SIGTERM, sending SIGKILL", d.Name, vm.Pid);
        vm.Signal(VmSignal.Kill);
        // Past this point the VM is going down whatever the job's token says: confirm its death.
        if (await WaitForExitAsync(vm, KillConfirmTimeout, CancellationToken.None).ConfigureAwait(false)) return StopStage.Sigkill;
        throw VirtdException.HypervisorError($"process {vm.Pid} of domain '{d.Name}' did not exit within {KillConfirmTimeout.TotalSeconds} s of SIGKILL");
    }

    private async Task<JobResult> StoppedAsync(DomainObject d, IVmInstance vm, StopStage stage)
    {
        OnExited(d, vm, await vm.Exited.ConfigureAwait(false)); // no-op when the driver's own exit event got there first
        return new JobResult { StoppedBy = stage, State = d.Runtime.State };
    }

    private async Task<bool> WaitForExitAsync(IVmInstance vm, TimeSpan timeout, CancellationToken ct)
    {
        if (vm.Exited.IsCompleted) return true;
        if (timeout <= TimeSpan.Zero) return false;
        try
        {
            await vm.Exited.WaitAsync(timeout, time, ct).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return vm.Exited.IsCompleted;
        }
    }

    private static IVmInstance RequireRunning(DomainObject d, string action, params DomainState[] allowed)
    {
        var view = d.View;
        var (runtime, vm) = (view.Runtime, view.Instance);
        if (vm is null || !allowed.Contains(runtime.State))
            throw VirtdException.InvalidState($"cannot {action} domain '{d.Name}' while it is {Describe(runtime.State)}");
        return vm;
    }

    public static string Describe(DomainState s) => s switch
    {
        DomainState.ShutOff => "shut off",
        DomainState.ShuttingDown => "shutting down",
        _ => s.ToString().ToLowerInvariant(),
    };

    /// <summary>
    /// A VM ended. Runs once per run (the detach is reference-checked), from the driver's event
    /// handling or from the job that stopped it, whichever comes first.
    /// </summary>
    internal void OnExited(DomainObject d, IVmInstance vm, VmExit exit)
    {
        var intent = d.PendingStop;
        var (state, reason, ev) = intent switch
        {
            StopIntent.Destroy => (DomainState.ShutOff, StateReasons.Destroyed, "destroyed"),
            StopIntent.Shutdown when exit.Kind != VmExitKind.Crashed => (DomainState.ShutOff, StateReasons.Shutdown, "shutdown"),
            StopIntent.Restart => (DomainState.ShutOff, StateReasons.Rebooted, "stopped"),
            _ => exit.Kind switch
            {
                VmExitKind.GuestShutdown => (DomainState.ShutOff, StateReasons.GuestShutdown, "shutdown"),
                VmExitKind.GuestReset => (DomainState.ShutOff, StateReasons.Rebooted, "stopped"),
                VmExitKind.HostQuit => (DomainState.ShutOff, StateReasons.Destroyed, "destroyed"),
                _ => (DomainState.Crashed, exit.Detail is null ? StateReasons.Crashed : $"{StateReasons.Crashed}: {exit.Detail}", "crashed"),
            },
        };
        if (!d.Detach(vm, state, reason, ev, time.GetUtcNow())) return;
        d.PendingStop = StopIntent.None;
        if (intent != StopIntent.None || d.Removed) return;

        var def = d.Definition;
        var restart = exit.Kind switch
        {
            VmExitKind.GuestShutdown => def.OnPoweroff == LifecycleAction.Restart,
            VmExitKind.GuestReset => def.OnReboot == LifecycleAction.Restart,
            VmExitKind.Crashed or VmExitKind.HostSignal => def.OnCrash == LifecycleAction.Restart,
            _ => false,
        };
        if (state == DomainState.Crashed) log.LogWarning("domain {Domain} crashed: {Detail}", d.Name, exit.Detail ?? exit.Kind.ToString());
        if (restart) RestartRequested?.Invoke(d);
    }

    private DateTimeOffset Now => time.GetUtcNow();

    public IVmEventSink Adopt(DomainObject domain, IVmInstance vm, DomainDefinition live, DomainState state, string reason, DateTimeOffset startedAt)
    {
        domain.PendingStop = StopIntent.None;
        domain.Attach(vm, live, state, reason, StateReasons.Reconnecting, time.GetUtcNow(), startedAt);
        var sink = new Sink(this, domain);
        if (vm.Exited.IsCompleted) OnExited(domain, vm, vm.Exited.Result); // died while being adopted
        return sink;
    }

    public void MarkStopped(DomainObject domain, string reason) =>
        domain.MarkInactive(DomainState.ShutOff, reason, "stopped", time.GetUtcNow());

    private sealed class Sink(DomainLifecycle owner, DomainObject domain) : IVmEventSink
    {
        public void OnExited(IVmInstance vm, VmExit exit) => owner.OnExited(domain, vm, exit);

        public void OnStateChanged(IVmInstance vm, DomainState state, string reason, string lifecycleEvent) =>
            domain.Transition(vm, state, reason, lifecycleEvent, owner.Now);

        public void OnStateObserved(IVmInstance vm, DomainState state, string reason, string lifecycleEvent) =>
            domain.Observe(vm, state, reason, lifecycleEvent, owner.Now);

        public void OnGuestEvent(IVmInstance vm, string lifecycleEvent) => domain.Announce(vm, lifecycleEvent);
    }
}
