using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Core.Domains;

/// <summary>
/// What the action commands share, and what happens when a VM exits on its own. Driver-independent: the stop
/// contract of seed 001 (SIGTERM, wait, SIGKILL unless graceful) lives here once for every driver. Why a VM goes
/// down is said by whoever holds its domain's gate (<see cref="JobGate.StopIntent"/>), never by the domain itself.
/// </summary>
public sealed class DomainLifecycle(DriverCatalog drivers, TimeProvider time, ILogger<DomainLifecycle> log, ResourceLimits? limits = null) : IVmHost
{
    public DriverCatalog Drivers => drivers;

    /// <summary>The host's limits (memory of active domains); none in tests that do not set them.</summary>
    public ResourceLimits? Limits => limits;

    /// <summary>How long to wait for death after SIGKILL before calling it a hypervisor error.</summary>
    public static readonly TimeSpan KillConfirmTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Set by the service: submits a start job when a domain must restart after an exit.</summary>
    internal Action<DomainObject>? RestartRequested { get; set; }

    /// <summary>Sends SIGTERM to the domain's VM for <paramref name="job"/> (a destroy) and records which VM and when.</summary>
    internal void Terminate(Job job)
    {
        var vm = job.Domain.Instance;
        if (vm is null || vm.Exited.IsCompleted) return;
        job.StopIntent = StopIntent.Destroy;
        job.Signalled = vm;
        job.SignalledAt = time.GetUtcNow();
        SendTerm(vm, job);
    }

    /// <summary>
    /// What virtd asked of a VM that may take effect after the job that asked has ended: a SIGTERM that a stopped
    /// process keeps pending past a graceful destroy's timeout, a monitor command that QEMU runs after it timed out.
    /// Kept with the VM (weakly: it goes with the VM), so that the late effect is told as what it is, and by whom.
    /// </summary>
    private sealed class Asked
    {
        public (Guid Job, DateTimeOffset At)? Sigterm;
        public (Guid Job, DomainState Target)? Command;
    }

    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<IVmInstance, Asked> _asked = new();

    private void SendTerm(IVmInstance vm, GateTicket by)
    {
        _asked.GetOrCreateValue(vm).Sigterm = (by.Id, time.GetUtcNow());
        vm.Signal(VmSignal.Term);
    }

    /// <summary>Launches the domain's VM and attaches it.</summary>
    internal async Task<JobResult> LaunchAsync(DomainObject d, DomainDefinition definition, CancellationToken ct)
    {
        limits?.CheckStart(d); // again at run time: starts queued meanwhile may have taken the memory
        var driver = drivers.Require(definition.Driver ?? DriverKind.Simulated);
        var vm = await driver.LaunchAsync(d, definition, new Sink(this, d), ct).ConfigureAwait(false);
        d.Attach(vm, definition, DomainState.Running, StateReasons.Booted, "started", time.GetUtcNow());
        if (vm.Exited.IsCompleted) OnExited(d, vm, await vm.Exited.ConfigureAwait(false)); // died before we attached it
        return new JobResult { State = d.Runtime.State };
    }

    /// <summary>
    /// Suspend and resume: noop when already there, else the monitor command, then the new state. A command that timed
    /// out is remembered: if the VM gets there later on its own, the event names <paramref name="job"/>.
    /// </summary>
    internal async Task<JobResult> PauseOrResumeAsync(Job job, string action, DomainState from, DomainState to, string reason,
        string lifecycleEvent, Func<IVmInstance, Task> command)
    {
        var d = job.Domain;
        var view = d.View;
        if (view.Instance is not null && view.Runtime.State == to) return new JobResult { Noop = true, State = to };
        var vm = RequireRunning(d, action, from);
        try
        {
            await command(vm).ConfigureAwait(false);
        }
        catch (VirtdException e) when (e.Code == ErrorCodes.MonitorTimeout)
        {
            _asked.GetOrCreateValue(vm).Command = (job.Id, to);
            throw;
        }
        d.Transition(vm, to, reason, lifecycleEvent, time.GetUtcNow());
        return new JobResult { State = d.Runtime.State };
    }

    /// <summary>A shutdown gave up with the guest still up: back to the state it had.</summary>
    internal void ShutdownFailed(DomainObject d, IVmInstance vm, DomainState before) =>
        d.Transition(vm, before, StateReasons.User, "shutdown-failed", time.GetUtcNow());

    /// <summary>
    /// The ACPI power button, then up to <paramref name="acpiTimeout"/> for the guest to power off; with
    /// <paramref name="force"/>, destroy after that (SIGTERM, then SIGKILL after the destroy timeout, or at
    /// <paramref name="killBy"/> if sooner). Returns the stage that stopped the VM, or null when the guest stayed
    /// up and <paramref name="force"/> is off. A failed button press escalates at once when
    /// <paramref name="powerdownFailureEscalates"/>, else it fails the caller.
    /// </summary>
    internal async Task<StopStage?> PowerOffAsync(DomainObject d, IVmInstance vm, GateTicket holder, TimeSpan acpiTimeout, bool force,
        bool powerdownFailureEscalates, DateTimeOffset killBy, CancellationToken ct)
    {
        var deadline = time.GetUtcNow() + acpiTimeout;
        holder.StopIntent = StopIntent.Shutdown;
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
        if (await WaitForExitAsync(vm, holder, deadline - time.GetUtcNow(), ct).ConfigureAwait(false)) return StopStage.Acpi;
        if (!force) return null;
        log.LogWarning("domain {Domain}: not powered off within {Timeout}; destroying it", d.Name, acpiTimeout);
        holder.StopIntent = StopIntent.Destroy;
        SendTerm(vm, holder);
        var killAt = time.GetUtcNow() + TimeSpan.FromSeconds(DestroyCommand.DefaultTimeout);
        return await TerminateAsync(d, vm, holder, killAt < killBy ? killAt : killBy, graceful: false, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// The daemon stops with <c>Guests:OnDaemonStop=shutdown</c>: ACPI power button, up to <paramref name="acpiTimeout"/>
    /// for the guest to power off, then destroy (SIGTERM, then SIGKILL by <paramref name="deadline"/>). Runs outside
    /// the job queue, which no longer takes jobs; returns which stage stopped the VM, or null when none ran.
    /// </summary>
    public async Task<StopStage?> StopForDaemonAsync(GateLease lease, TimeSpan acpiTimeout, DateTimeOffset deadline, CancellationToken ct)
    {
        var d = lease.Domain;
        var vm = d.Instance;
        if (vm is null || vm.Exited.IsCompleted) return null;
        // With force it always ends in a stage (or throws).
        var stage = (await PowerOffAsync(d, vm, lease, acpiTimeout, force: true, powerdownFailureEscalates: true, deadline, ct).ConfigureAwait(false))!.Value;
        await StoppedAsync(d, vm, stage).ConfigureAwait(false);
        return stage;
    }

    /// <summary>SIGTERM has been sent: wait until <paramref name="deadline"/>, then SIGKILL unless graceful.</summary>
    internal async Task<StopStage> TerminateAsync(DomainObject d, IVmInstance vm, GateTicket holder, DateTimeOffset deadline, bool graceful, CancellationToken ct)
    {
        if (await WaitForExitAsync(vm, holder, deadline - time.GetUtcNow(), ct).ConfigureAwait(false)) return StopStage.Sigterm;
        if (graceful)
        {
            holder.StopIntent = StopIntent.None;
            throw new VirtdException(ErrorCodes.DestroyTimeout, 504, "Destroy timeout",
                $"process {vm.Pid} of domain '{d.Name}' is still alive after SIGTERM; a graceful destroy never sends SIGKILL, so the domain was left as it was");
        }
        log.LogWarning("domain {Domain}: process {Pid} survived SIGTERM, sending SIGKILL", d.Name, vm.Pid);
        vm.Signal(VmSignal.Kill);
        // Past this point the VM is going down whatever the job's token says: confirm its death.
        if (await WaitForExitAsync(vm, holder, KillConfirmTimeout, CancellationToken.None).ConfigureAwait(false)) return StopStage.Sigkill;
        throw VirtdException.HypervisorError($"process {vm.Pid} of domain '{d.Name}' did not exit within {KillConfirmTimeout.TotalSeconds} s of SIGKILL");
    }

    internal async Task<JobResult> StoppedAsync(DomainObject d, IVmInstance vm, StopStage stage)
    {
        OnExited(d, vm, await vm.Exited.ConfigureAwait(false)); // no-op when the driver's own exit event got there first
        return new JobResult { StoppedBy = stage, State = d.Runtime.State };
    }

    /// <summary>Waits for the VM to exit, up to <paramref name="timeout"/>; a job waiting so lets its worker go meanwhile.</summary>
    private async Task<bool> WaitForExitAsync(IVmInstance vm, GateTicket holder, TimeSpan timeout, CancellationToken ct)
    {
        if (vm.Exited.IsCompleted) return true;
        if (timeout <= TimeSpan.Zero) return false;
        (holder as Job)?.ReleaseWorker();
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

    internal static IVmInstance RequireRunning(DomainObject d, string action, params DomainState[] allowed)
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
        var intent = d.Gate.StopIntent;
        Guid? late = null;
        if (intent == StopIntent.None && _asked.TryGetValue(vm, out var asked) && asked.Sigterm is { } term && EndedBySigterm(exit))
        {
            // Our own SIGTERM, kept pending (a stopped process) past the job that sent it: a destroy, late; never a crash.
            intent = StopIntent.Destroy;
            late = term.Job;
        }
        var (state, reason, ev) = intent switch
        {
            StopIntent.Destroy when late is { } j => (DomainState.ShutOff,
                $"{StateReasons.Destroyed}: the SIGTERM of job {j}, which had given up, took effect late (stopped by sigterm)", "destroyed"),
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
        if (!d.Detach(vm, state, reason, ev, time.GetUtcNow(), late)) return;
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

    /// <summary>An end a SIGTERM makes: QEMU's own "host-signal" shutdown, death by signal 15, or a clean exit with no word why.</summary>
    private static bool EndedBySigterm(VmExit exit) =>
        exit.Kind == VmExitKind.HostSignal || exit is { Kind: VmExitKind.Crashed } and ({ Signal: 15 } or { ExitCode: 0 });

    public IVmEventSink Adopt(DomainObject domain, IVmInstance vm, DomainDefinition live, DomainState state, string reason, DateTimeOffset startedAt)
    {
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

        public void OnStateChanged(IVmInstance vm, DomainState state, string reason, string lifecycleEvent)
        {
            // A command that timed out and was run after all: the event names the job that sent it.
            Guid? late = null;
            if (owner._asked.TryGetValue(vm, out var asked) && asked.Command is { } c && c.Target == state)
            {
                late = c.Job;
                asked.Command = null;
            }
            domain.Transition(vm, state, late is null ? reason : StateReasons.User, lifecycleEvent, owner.Now, late);
        }

        public void OnStateObserved(IVmInstance vm, DomainState state, string reason, string lifecycleEvent) =>
            domain.Observe(vm, state, reason, lifecycleEvent, owner.Now);

        public void OnGuestEvent(IVmInstance vm, string lifecycleEvent) => domain.Announce(vm, lifecycleEvent);
    }
}
