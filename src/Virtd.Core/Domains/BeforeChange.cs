namespace Virtd.Core.Domains;

/// <summary>
/// Called when every check of a change has passed, just before anything changes (a definition is written or
/// removed, a job is queued), with the domain and the job's id when the change is a job. The API writes its
/// audit line here. Throwing stops the change: nothing is written and nothing is queued.
/// </summary>
public delegate void BeforeChange(DomainObject domain, Guid? jobId);
