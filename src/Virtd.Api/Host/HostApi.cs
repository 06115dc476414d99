using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Api.Errors;
using Virtd.Api.Hosting;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Persistence;

namespace Virtd.Api.Host;

public sealed record DaemonDto(string Version, DaemonState State, DateTimeOffset StartedAt, DateTimeOffset? ReadyAt, double UptimeSeconds, int Pid);

public sealed record JobPoolDto(int Workers, int PriorityWorkers, int Queued, int Running, int QueueLimit, int PerDomainQueueLimit, double WaitTimeoutSeconds,
    JournalDto Journal);

/// <summary>The job journal: whether it is kept, and records and fsyncs written since the daemon started (many records share an fsync).</summary>
public sealed record JournalDto(bool Enabled, long Records, long Fsyncs);

public sealed record DomainCountsDto(int Defined, int Running, int Paused);

public sealed record HostDto(
    string Hostname,
    int Cpus,
    long MemoryMiB,
    string Os,
    DriverKind DefaultDriver,
    IReadOnlyList<HypervisorInfo> Hypervisors,
    IReadOnlyList<string> StoragePools,
    DaemonDto Daemon,
    JobPoolDto Jobs,
    DomainCountsDto Domains,
    int EventSubscribers,
    IReadOnlyList<Quarantined> Quarantined);

public sealed record HealthDto(string Status);

public static class HostApi
{
    public static IEndpointRouteBuilder MapHostApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/host", GetHost).WithTags("Host").WithName("GetHost").WithSummary("Host and daemon facts").Requires(Role.Reader);
        app.MapGet("/healthz", () => TypedResults.Ok(new HealthDto("ok"))).WithTags("Host").WithName("Healthz")
            .WithSummary("Liveness: 200 while the process serves HTTP (anonymous)").AllowAnonymous();
        app.MapGet("/readyz", Ready).WithTags("Host").WithName("Readyz")
            .WithSummary("Readiness: 200 once drivers and workers are up; 503 while starting or stopping (anonymous)").AllowAnonymous().Problems(503);
        return app;
    }

    public static Ok<HealthDto> Ready(DaemonStatus status) => status.State switch
    {
        DaemonState.Ready => TypedResults.Ok(new HealthDto("ready")),
        DaemonState.Stopping => throw VirtdException.ShuttingDown(),
        _ => throw new VirtdException(ErrorCodes.NotReady, 503, "Not ready", "the daemon is still starting") { RetryAfterSeconds = 1 },
    };

    public static Ok<HostDto> GetHost(DaemonStatus status, DomainService svc, DriverCatalog drivers, JobScheduler scheduler,
        StoragePaths paths, EventBus bus, JobJournal journal, TimeProvider time)
    {
        var all = svc.Registry.List();
        var running = all.Count(d => d.Runtime.State is DomainState.Running or DomainState.ShuttingDown);
        var paused = all.Count(d => d.Runtime.State == DomainState.Paused);
        var o = scheduler.Options;
        var now = time.GetUtcNow();
        return TypedResults.Ok(new HostDto(
            Environment.MachineName,
            Environment.ProcessorCount,
            GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024 * 1024),
            System.Runtime.InteropServices.RuntimeInformation.OSDescription,
            svc.DefaultDriver,
            drivers.All.Select(d => d.Info).ToList(),
            paths.Pools,
            new DaemonDto(typeof(HostApi).Assembly.GetName().Version?.ToString(3) ?? "0.0.0", status.State, status.StartedAt, status.ReadyAt,
                Math.Round((now - status.StartedAt).TotalSeconds, 3), Environment.ProcessId),
            new JobPoolDto(o.Workers, o.PriorityWorkers, scheduler.QueuedCount, scheduler.RunningCount, o.QueueLimit, o.PerDomainQueueLimit,
                o.WaitTimeout.TotalSeconds, new JournalDto(o.Journal, journal.Records, journal.Fsyncs)),
            new DomainCountsDto(all.Count, running, paused),
            bus.SubscriberCount,
            svc.Quarantined));
    }
}
