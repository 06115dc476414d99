using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Core.Domains;

/// <summary>Start the domain: launch its VM with the stored definition.</summary>
public sealed record StartCommand : JobCommand
{
    public StartCommand() : base(JobKind.Start) { }

    public override void Check(DomainObject domain, DomainLifecycle lifecycle)
    {
        var state = domain.Runtime.State;
        if (state == DomainState.Paused) throw Refusal(domain, "it is paused; resume it instead");
        if (domain.Runtime.IsActive) return;
        lifecycle.Drivers.Require(domain.Driver);
        lifecycle.Limits?.CheckStart(domain);
    }

    public override async Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct)
    {
        var d = job.Domain;
        var view = d.View;
        if (view.Runtime.State == DomainState.Paused)
            throw VirtdException.InvalidState($"domain '{d.Name}' is paused; resume it instead");
        if (view.Runtime.IsActive) return new JobResult { Noop = true, State = view.Runtime.State };
        return await lifecycle.LaunchAsync(d, view.Definition, ct).ConfigureAwait(false);
    }
}

/// <summary>Pause the domain's CPUs.</summary>
public sealed record SuspendCommand : JobCommand
{
    public SuspendCommand() : base(JobKind.Suspend) { }

    public override void Check(DomainObject domain, DomainLifecycle lifecycle)
    {
        if (domain.Runtime.State is DomainState.ShutOff or DomainState.Crashed) throw Refusal(domain, "it is not running");
    }

    public override Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct) =>
        lifecycle.PauseOrResumeAsync(job, Name, DomainState.Running, DomainState.Paused, StateReasons.User, "suspended", vm => vm.PauseAsync(ct));
}

/// <summary>Resume a paused domain.</summary>
public sealed record ResumeCommand : JobCommand
{
    public ResumeCommand() : base(JobKind.Resume) { }

    public override void Check(DomainObject domain, DomainLifecycle lifecycle)
    {
        if (domain.Runtime.State is DomainState.ShutOff or DomainState.Crashed) throw Refusal(domain, "it is not running");
    }

    public override Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct) =>
        lifecycle.PauseOrResumeAsync(job, Name, DomainState.Paused, DomainState.Running, StateReasons.Unpaused, "resumed", vm => vm.ResumeAsync(ct));
}

/// <summary>Hard reset; the VM keeps running.</summary>
public sealed record ResetCommand : JobCommand
{
    public ResetCommand() : base(JobKind.Reset) { }

    public override void Check(DomainObject domain, DomainLifecycle lifecycle)
    {
        if (domain.Runtime.State is DomainState.ShutOff or DomainState.Crashed) throw Refusal(domain, "it is not running");
    }

    public override async Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct)
    {
        var d = job.Domain;
        var vm = DomainLifecycle.RequireRunning(d, Name, DomainState.Running, DomainState.Paused);
        await vm.ResetAsync(ct).ConfigureAwait(false);
        d.Announce(vm, "reset");
        return new JobResult { State = d.Runtime.State };
    }
}

/// <summary>ACPI reboot: the power button, then a reset in the same process, or off with <c>onReboot: destroy</c>.</summary>
public sealed record RebootCommand : JobCommand
{
    public RebootCommand() : base(JobKind.Reboot) { }

    public override void Check(DomainObject domain, DomainLifecycle lifecycle)
    {
        var state = domain.Runtime.State;
        if (state != DomainState.Running) throw Refusal(domain, $"it is {DomainLifecycle.Describe(state)}");
    }

    public override async Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct)
    {
        var d = job.Domain;
        var vm = DomainLifecycle.RequireRunning(d, Name, DomainState.Running);
        if (d.Definition.OnReboot == LifecycleAction.Destroy) job.StopIntent = StopIntent.Restart;
        try
        {
            await vm.RebootAsync(ct).ConfigureAwait(false);
            if (!vm.Exited.IsCompleted) d.Announce(vm, "rebooted");
            return new JobResult { State = d.Runtime.State };
        }
        finally
        {
            // A guest that did not go down (it ignored the button): a later exit is not this reboot's.
            if (!vm.Exited.IsCompleted) job.StopIntent = StopIntent.None;
        }
    }
}

/// <summary>
/// The ACPI power button; the job ends when the guest is off. After <see cref="Timeout"/> seconds it fails
/// <c>shutdown-timeout</c> and leaves the VM running, or with <see cref="Force"/> escalates to a destroy.
/// </summary>
public sealed record ShutdownCommand : JobCommand
{
    public ShutdownCommand() : base(JobKind.Shutdown) { }

    public const int DefaultTimeout = 60;
    public const int MaxTimeout = 3600;

    /// <summary>Seconds to wait for the guest to power off (default 60, 0–3600). The wait holds no worker.</summary>
    [System.ComponentModel.DataAnnotations.Range(0, MaxTimeout)]
    public int? Timeout { get; init; }

    /// <summary>On timeout, destroy instead of failing.</summary>
    public bool Force { get; init; }

    public override void Validate() => CheckSeconds("timeout", Timeout, MaxTimeout);

    public override async Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct)
    {
        var d = job.Domain;
        var view = d.View;
        var vm = view.Instance;
        var before = view.Runtime.State;
        if (vm is null) return new JobResult { Noop = true, State = before };

        var timeout = TimeSpan.FromSeconds(Timeout ?? DefaultTimeout);
        var done = false;
        try
        {
            var stage = await lifecycle.PowerOffAsync(d, vm, job, timeout, Force, powerdownFailureEscalates: false, DateTimeOffset.MaxValue, ct)
                .ConfigureAwait(false);
            if (stage is null)
            {
                throw new VirtdException(ErrorCodes.ShutdownTimeout, 504, "Shutdown timeout",
                    $"domain '{d.Name}' did not power off within {timeout.TotalSeconds:0.###} s of the ACPI power button; it is still running");
            }
            done = true;
            return await lifecycle.StoppedAsync(d, vm, stage.Value).ConfigureAwait(false);
        }
        finally
        {
            if (!done && !vm.Exited.IsCompleted)
            {
                if (job.StopIntent == StopIntent.Shutdown) job.StopIntent = StopIntent.None;
                if (d.Runtime.State == DomainState.ShuttingDown) lifecycle.ShutdownFailed(d, vm, before);
            }
        }
    }
}

/// <summary>
/// SIGTERM, wait <see cref="Timeout"/> seconds, SIGKILL, confirm death. With <see cref="Graceful"/> it never sends
/// SIGKILL: a process still alive at the timeout fails the job <c>destroy-timeout</c> and the VM is left as it was.
/// A priority job: it signals as it is queued, supersedes the domain's queued jobs and runs on its own workers.
/// </summary>
public sealed record DestroyCommand : JobCommand
{
    public DestroyCommand() : base(JobKind.Destroy) { }

    public const int DefaultTimeout = 10;
    public const int MaxTimeout = 300;

    /// <summary>Never send SIGKILL: fail <c>destroy-timeout</c> if SIGTERM was not enough.</summary>
    public bool Graceful { get; init; }

    /// <summary>
    /// Seconds between SIGTERM and SIGKILL (default 10, 0–300). The wait holds no worker, and a destroy with an earlier
    /// deadline that may send SIGKILL supersedes this one while it waits.
    /// </summary>
    [System.ComponentModel.DataAnnotations.Range(0, MaxTimeout)]
    public int? Timeout { get; init; }

    /// <summary>When this destroy, sent at <paramref name="signalledAt"/>, gives up waiting for SIGTERM.</summary>
    public DateTimeOffset Deadline(DateTimeOffset signalledAt) => signalledAt + TimeSpan.FromSeconds(Timeout ?? DefaultTimeout);

    public override void Validate() => CheckSeconds("timeout", Timeout, MaxTimeout);

    /// <summary>Signals first, before it waits for the gate: the job holding it then fails fast.</summary>
    public override void Admitted(Job job, DomainLifecycle lifecycle) => lifecycle.Terminate(job);

    public override async Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken ct)
    {
        var d = job.Domain;
        var view = d.View;
        var vm = view.Instance;
        if (vm is null)
        {
            // The SIGTERM sent before queueing may have ended the VM already: then this destroy stopped it.
            if (job.Signalled is { Exited.IsCompleted: true } gone) return await lifecycle.StoppedAsync(d, gone, StopStage.Sigterm).ConfigureAwait(false);
            return new JobResult { Noop = true, State = view.Runtime.State };
        }
        if (!ReferenceEquals(job.Signalled, vm)) lifecycle.Terminate(job);
        var stage = await lifecycle.TerminateAsync(d, vm, job, Deadline(job.SignalledAt), Graceful, ct).ConfigureAwait(false);
        return await lifecycle.StoppedAsync(d, vm, stage).ConfigureAwait(false);
    }
}
