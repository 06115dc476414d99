using Virtd.Api.Access;
using Virtd.Api.Hosting;
using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Domains;
using Virtd.Api.Errors;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Api.Jobs;

public sealed record JobDto(
    Guid Id,
    JobKind Kind,
    string Domain,
    Guid DomainUuid,
    JobState State,
    DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt,
    JobResult? Result,
    JobError? Error)
{
    public static JobDto From(Job j)
    {
        var s = j.Status; // one consistent snapshot
        return new JobDto(j.Id, j.Kind, j.Domain.Name, j.Domain.Uuid, s.State, j.CreatedAt, s.StartedAt, s.FinishedAt, s.Result, s.Error);
    }
}

public sealed record JobListDto(int Count, IReadOnlyList<JobDto> Items);

public static class JobsApi
{
    public const int MaxWaitSeconds = 300;

    public static IEndpointRouteBuilder MapJobsApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/jobs").WithTags("Jobs");
        g.MapGet("", ListJobs).WithName("ListJobs").WithSummary("Recent jobs, newest first; filters domain, state; limit (default 100, ≤ 10000)")
            .Requires(Role.Reader).Problems(400);
        g.MapGet("/{jobId}", GetJobAsync).WithName("GetJob").WithSummary("One job; ?wait=N long-polls up to N s (≤ 300) for it to finish")
            .Requires(Role.Reader).Problems(400, 404);
        g.MapDelete("/{jobId}", CancelJob).WithName("CancelJob")
            .WithSummary("Cancel a queued job, or a running start, shutdown or reboot; 409 once finished or when not cancellable")
            .Requires(Role.Operator).Audited(202).Problems(404, 409, 503);
        return app;
    }

    public static Ok<JobListDto> ListJobs(string? domain, string? state, int? limit, JobStore store, DomainService svc)
    {
        var stateFilter = EnumText.ParseQuery<JobState>("state", state);
        if (limit is < 1 or > 10_000) throw VirtdException.Validation("limit", "must be between 1 and 10000");
        Guid? uuid = null;
        if (domain is not null) uuid = svc.Registry.Find(domain)?.Uuid ?? (Guid.TryParse(domain, out var u) ? u : null);
        var jobs = store.List(j =>
            (domain is null || j.Domain.Name == domain || j.Domain.Uuid == uuid)
            && (stateFilter is null || j.State == stateFilter), limit ?? 100);
        return TypedResults.Ok(new JobListDto(jobs.Count, jobs.Select(JobDto.From).ToList()));
    }

    public static async Task<Ok<JobDto>> GetJobAsync(string jobId, int? wait, JobStore store, DaemonStatus life, CancellationToken ct)
    {
        CheckWait(wait);
        var job = Find(jobId, store);
        if (wait is > 0 && !job.IsFinished) await WaitAsync(job, wait.Value, life, ct).ConfigureAwait(false);
        return TypedResults.Ok(JobDto.From(job));
    }

    public static Accepted<JobDto> CancelJob(string jobId, HttpContext http, JobStore store, JobScheduler scheduler)
    {
        var job = Find(jobId, store);
        if (job.IsFinished) throw VirtdException.InvalidState($"job {job.Id} has already finished ({job.State.ToString().ToLowerInvariant()})");
        if (job.State == JobState.Running && !job.Cancellable) throw NotCancellable(job);
        Audit.Of(http).Write(job.Domain.Name, job.Id);
        if (!scheduler.Cancel(job, "cancelled by request")) throw NotCancellable(job);
        return TypedResults.Accepted($"/api/v1/jobs/{job.Id}", JobDto.From(job));
    }

    /// <summary>202 with the job and its Location; with <paramref name="wait"/>, 200 if it finished in time.</summary>
    public static async Task<Results<Ok<JobDto>, Accepted<JobDto>>> RespondAsync(Job job, int? wait, HttpContext http, DaemonStatus life, CancellationToken ct)
    {
        if (wait is > 0 && !job.IsFinished) await WaitAsync(job, wait.Value, life, ct).ConfigureAwait(false);
        // One snapshot decides both status and body: a job finishing in between must not give 202 with a finished job.
        var dto = JobDto.From(job);
        if (wait is > 0 && dto.State >= JobState.Succeeded) return TypedResults.Ok(dto);
        return TypedResults.Accepted($"/api/v1/jobs/{job.Id}", dto);
    }

    /// <summary>Waits for the job, the deadline, the client going away, or shutdown phase 1 being done (queued jobs are cancelled by then): whichever comes first.</summary>
    private static async Task WaitAsync(Job job, int seconds, DaemonStatus life, CancellationToken ct)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, life.RequestsEnding);
        try
        {
            await job.Finished.WaitAsync(TimeSpan.FromSeconds(seconds), linked.Token).ConfigureAwait(false);
        }
        catch (TimeoutException) { }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
    }

    private static VirtdException NotCancellable(Job job) =>
        new(ErrorCodes.JobNotCancellable, 409, "Job not cancellable", $"a running {job.Kind.ToString().ToLowerInvariant()} job cannot be cancelled");

    internal static void CheckWait(int? wait)
    {
        if (wait is < 0 or > MaxWaitSeconds) throw VirtdException.Validation("wait", $"must be between 0 and {MaxWaitSeconds} seconds");
    }

    private static Job Find(string jobId, JobStore store) =>
        Guid.TryParse(jobId, out var id) && store.Find(id) is { } job ? job : throw VirtdException.JobNotFound(jobId);
}
