using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Core.Domains;

/// <summary>
/// <c>Guests:OnDaemonStop=shutdown</c> (libvirt-guests' ON_SHUTDOWN=shutdown): every running VM gets the ACPI
/// power button, <c>Guests:ParallelShutdown</c> at a time, each bounded by <c>Guests:ShutdownTimeout</c> and then
/// destroyed, all within <c>Guests:OverallTimeout</c>.
/// </summary>
public sealed class GuestsOnStop(DomainRegistry registry, DomainLifecycle lifecycle, JobScheduler scheduler, GuestsOptions options, TimeProvider time,
    ILogger<GuestsOnStop> log)
{
    public GuestStopPolicy Policy => options.OnDaemonStop;

    public async Task ShutdownAllAsync(CancellationToken cancellationToken)
    {
        var running = registry.List().Where(d => d.Instance is not null).ToList();
        if (running.Count == 0) return;
        var deadline = time.GetUtcNow() + options.OverallTimeout;
        log.LogInformation("shutting down {Count} running VM(s), {Parallel} at a time", running.Count, options.ParallelShutdown);
        foreach (var batch in running.Chunk(options.ParallelShutdown))
        {
            var left = deadline - time.GetUtcNow();
            var acpi = left < options.ShutdownTimeout ? left : options.ShutdownTimeout;
            await Task.WhenAll(batch.Select(d => StopOneAsync(d, acpi, deadline, cancellationToken))).ConfigureAwait(false);
        }
    }

    private async Task StopOneAsync(DomainObject d, TimeSpan acpi, DateTimeOffset deadline, CancellationToken ct)
    {
        // The jobs have ended, so the gate is free: the daemon holds it while the guest goes down.
        using var lease = scheduler.LeaseForDaemonStop(d);
        if (lease is null)
        {
            log.LogError("domain {Domain}: a job still holds it; not stopped with the daemon", d.Name);
            return;
        }
        try
        {
            var stage = await lifecycle.StopForDaemonAsync(lease, acpi, deadline, ct).ConfigureAwait(false);
            if (stage is { } s) log.LogInformation("domain {Domain} stopped with the daemon ({Stage})", d.Name, s.ToString().ToLowerInvariant());
        }
        catch (VirtdException e)
        {
            log.LogError("domain {Domain}: could not be stopped with the daemon: {Detail}", d.Name, e.Detail);
        }
        catch (OperationCanceledException)
        {
            log.LogError("domain {Domain}: still running when the guests' shutdown bound ran out", d.Name);
        }
    }
}
