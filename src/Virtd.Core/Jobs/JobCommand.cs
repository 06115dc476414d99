using System.Text.Json.Serialization;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;

namespace Virtd.Core.Jobs;

/// <summary>
/// What a job does: one record per action (<see cref="StartCommand"/>, <see cref="ShutdownCommand"/>, ...), bound
/// straight from the request body, kept in the job journal as it is, and run by a worker once the job holds the
/// domain's gate. Its <see cref="RunAsync"/> reads as libvirt's entry points do: re-check the state, call the
/// driver, record the new state (the gate is taken and released around it by the scheduler).
/// </summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "kind")]
[JsonDerivedType(typeof(StartCommand), "start")]
[JsonDerivedType(typeof(ShutdownCommand), "shutdown")]
[JsonDerivedType(typeof(RebootCommand), "reboot")]
[JsonDerivedType(typeof(ResetCommand), "reset")]
[JsonDerivedType(typeof(SuspendCommand), "suspend")]
[JsonDerivedType(typeof(ResumeCommand), "resume")]
[JsonDerivedType(typeof(DestroyCommand), "destroy")]
public abstract record JobCommand
{
    protected JobCommand(JobKind kind) => Kind = kind;

    /// <summary>Not a member of the body: the route (or, in the journal, the type discriminator) says it.</summary>
    [JsonIgnore] public JobKind Kind { get; }

    /// <summary>Destroy: queued ahead of everything else and run by its own workers.</summary>
    [JsonIgnore] public bool Priority => Kind == JobKind.Destroy;

    /// <summary>Whether a running job of this kind may be cancelled.</summary>
    [JsonIgnore] public bool Cancellable => Kind is JobKind.Start or JobKind.Shutdown or JobKind.Reboot;

    /// <summary>Checks the command's own values (400 <c>validation-failed</c>), before anything is looked up.</summary>
    public virtual void Validate() { }

    /// <summary>
    /// At request time, against the domain as it is now: throws <c>invalid-state</c> (or <c>hypervisor-unavailable</c>)
    /// when the action cannot be done, so that the client hears it at once instead of from a failed job.
    /// </summary>
    public virtual void Check(DomainObject domain, DomainLifecycle lifecycle) { }

    /// <summary>Once the job is admitted and before it can reach a worker (a destroy sends SIGTERM here).</summary>
    public virtual void Admitted(Job job, DomainLifecycle lifecycle) { }

    /// <summary>Does the action. The caller holds the domain's gate.</summary>
    public abstract Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken cancellationToken);

    /// <summary>The action's name as clients write it (<c>start</c>, <c>shutdown</c>, ...).</summary>
    [JsonIgnore] public string Name => Kind.ToString().ToLowerInvariant();

    /// <summary>409 <c>invalid-state</c>: this action cannot be done to the domain as it is.</summary>
    protected VirtdException Refusal(DomainObject domain, string why) =>
        VirtdException.InvalidState($"cannot {Name} domain '{domain.Name}': {why}");

    protected static void CheckSeconds(string field, int? seconds, int max)
    {
        if (seconds is < 0 || seconds > max) throw VirtdException.Validation(field, $"must be between 0 and {max} seconds");
    }
}
