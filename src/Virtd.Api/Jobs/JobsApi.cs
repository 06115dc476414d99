using Virtd.Api.Access;
using Virtd.Api.Hosting;
using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Domains;
using Virtd.Api.Errors;
using Virtd.Core.Domains;
using Virtd.Core.Configuration;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Api.Jobs;

public sealed record JobDto(
    Guid Id,
    JobKind Kind,
    string? Domain,
    Guid? DomainUuid,
    JobState State,
    DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt,
    JobResult? Result,
    JobError? Error,
    string? Volume = null,
    double? Progress = null)
{
    public static JobDto From(Job j)
    {
        var s = j.Status; // one consistent snapshot
        return new JobDto(j.Id, j.Kind, j.Domain.Name, j.Domain.Uuid, s.State, j.CreatedAt, s.StartedAt, s.FinishedAt, s.Result, s.Error);
    }

    /// <summary>A volume copy: no domain; <c>volume</c> is the new volume, <c>progress</c> its percent done.</summary>
    public static JobDto From(Virtd.Core.Storage.VolumeJob j)
    {
        var s = j.Status;
        return new JobDto(j.Id, JobKind.VolumeCopy, null, null, s.State, j.CreatedAt, s.StartedAt, s.FinishedAt, s.Result, s.Error,
            j.Target.ToString(), Math.Round(j.Progress, 2));
    }
}

/// <summary>A page of jobs, newest first; <c>next</c> (absent on the last page) is the cursor for <c>?after=</c>.</summary>
public sealed record JobListDto(int Count, IReadOnlyList<JobDto> Items, string? Next = null);

public static class JobsApi
{
    public const int MaxWaitSeconds = 300;

    public static IEndpointRouteBuilder MapJobsApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/jobs").WithTags("Jobs");
        g.MapGet("", ListJobs).WithName("ListJobs").WithSummary("Jobs, newest first; filters domain, state; in pages of ?limit= (default and most: Limits:ListDefault), the next from ?after=<next>")
            .WithDescription("A longer list ends the page with `next` in the body and a `Link: <…>; rel=\"next\"` header that asks for the rest.")
            .Requires(Role.Reader).Problems(400);
        g.MapGet("/{jobId}", GetJobAsync).WithName("GetJob").WithSummary("One job; ?wait=N long-polls up to N s (≤ 300) for it to finish")
            .Requires(Role.Reader).Problems(400, 404);
        g.MapDelete("/{jobId}", CancelJob).WithName("CancelJob")
            .WithSummary("Cancel a queued job, or a running start, shutdown or reboot; 409 once finished or when not cancellable")
            .Requires(Role.Operator).Audited(202).Problems(404, 409, 503);
        return app;
    }

    public static Ok<JobListDto> ListJobs(string? domain, string? state, int? limit, string? after, HttpContext http,
        JobStore store, DomainService svc, LimitsOptions limits, Virtd.Core.Storage.VolumeService volumes)
    {
        var stateFilter = EnumText.ParseQuery<JobState>("state", state);
        var take = Paging.Limit(limit, limits);
        var from = Paging.Position("jobs", after) is { } position ? JobPosition(position) : default((long Ticks, Guid Id)?);
        Guid? uuid = null;
        if (domain is not null) uuid = svc.Registry.Find(domain)?.Uuid ?? (Guid.TryParse(domain, out var u) ? u : null);
        var jobs = store.List(j =>
            (domain is null || j.Domain.Name == domain || j.Domain.Uuid == uuid)
            && (stateFilter is null || j.State == stateFilter)
            && (from is not { } f || JobStore.Compare(j, f.Ticks, f.Id) < 0), take + 1);
        var items = jobs.Select(JobDto.From).ToList();
        if (domain is null)
        {
            // Volume copies have no domain: listed with the rest, in the same order, when no domain is asked for.
            items.AddRange(volumes.Jobs().Select(JobDto.From).Where(j =>
                (stateFilter is null || j.State == stateFilter) && (from is not { } f || Compare(j, f.Ticks, f.Id) < 0)));
            items.Sort((a, b) => Compare(b, a.CreatedAt.UtcTicks, a.Id));
        }
        string? next = null;
        if (items.Count > take)
        {
            items.RemoveRange(take, items.Count - take);
            var last = items[^1];
            next = Paging.Cursor("jobs", $"{last.CreatedAt.UtcTicks}:{last.Id:N}");
            Paging.Link(http, next);
        }
        return TypedResults.Ok(new JobListDto(items.Count, items, next));
    }

    private static int Compare(JobDto job, long createdTicks, Guid id)
    {
        var c = job.CreatedAt.UtcTicks.CompareTo(createdTicks);
        return c != 0 ? c : job.Id.CompareTo(id);
    }

    private static (long Ticks, Guid Id) JobPosition(string position)
    {
        var colon = position.IndexOf(':');
        if (colon > 0 && long.TryParse(position.AsSpan(0, colon), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ticks)
            && Guid.TryParseExact(position.AsSpan(colon + 1), "N", out var id))
            return (ticks, id);
        throw VirtdException.Validation("after", "is not a cursor this list gave; pass the 'next' of the previous page unchanged");
    }

    public static async Task<Ok<JobDto>> GetJobAsync(string jobId, int? wait, JobStore store, DaemonStatus life, Virtd.Core.Storage.VolumeService volumes, CancellationToken ct)
    {
        CheckWait(wait);
        if (Guid.TryParse(jobId, out var vid) && volumes.FindJob(vid) is { } copy)
        {
            if (wait is > 0 && !copy.IsFinished) await WaitAsync(copy.Finished, wait.Value, life, ct).ConfigureAwait(false);
            return TypedResults.Ok(JobDto.From(copy));
        }
        var job = Find(jobId, store);
        if (wait is > 0 && !job.IsFinished) await WaitAsync(job, wait.Value, life, ct).ConfigureAwait(false);
        return TypedResults.Ok(JobDto.From(job));
    }

    public static Accepted<JobDto> CancelJob(string jobId, HttpContext http, JobStore store, JobScheduler scheduler, Virtd.Core.Storage.VolumeService volumes)
    {
        if (Guid.TryParse(jobId, out var vid) && volumes.FindJob(vid) is { } copy)
        {
            if (copy.IsFinished) throw VirtdException.InvalidState($"job {copy.Id} has already finished ({copy.Status.State.ToString().ToLowerInvariant()})");
            Audit.Of(http).Write(jobId: copy.Id);
            copy.Cancel();
            return TypedResults.Accepted($"/api/v1/jobs/{copy.Id}", JobDto.From(copy));
        }
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
    private static Task WaitAsync(Job job, int seconds, DaemonStatus life, CancellationToken ct) => WaitAsync(job.Finished, seconds, life, ct);

    private static async Task WaitAsync(Task finished, int seconds, DaemonStatus life, CancellationToken ct)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, life.RequestsEnding);
        try
        {
            await finished.WaitAsync(TimeSpan.FromSeconds(seconds), linked.Token).ConfigureAwait(false);
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
