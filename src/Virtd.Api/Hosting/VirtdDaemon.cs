using System.Diagnostics;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;

namespace Virtd.Api.Hosting;

/// <summary>
/// The daemon's life in stages (ARCHITECTURE.md "Daemon lifecycle"). Start: configuration checked →
/// definitions loaded → drivers initialised in parallel → workers started; Kestrel binds after this
/// service has started, and readiness turns true once it has. Stop: phase 1 on ApplicationStopping
/// (signal everything, block on nothing), phase 2 here in StopAsync (wait, bounded by ShutdownTimeout).
/// </summary>
public sealed class VirtdDaemon(
    IServiceProvider services,
    IHostApplicationLifetime lifetime,
    DaemonStatus status,
    ILogger<VirtdDaemon> log) : IHostedService
{
    private readonly object _stopLock = new();
    private CancellationTokenRegistration _stopping;
    private CancellationTokenRegistration _started;
    private Task? _stop;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var total = Stopwatch.StartNew();
        var options = Stage("configuration", () => VirtdConfiguration.Resolve(services));
        var domains = services.GetRequiredService<DomainService>();
        var drivers = services.GetRequiredService<DriverCatalog>();
        var scheduler = services.GetRequiredService<JobScheduler>();

        Stage("directories", () =>
        {
            Directory.CreateDirectory(options.Virtd.StateDirectory);
            Directory.CreateDirectory(options.Virtd.DomainsDirectory);
            Directory.CreateDirectory(options.Virtd.RunDirectory);
            foreach (var pool in options.Storage.Pools) Directory.CreateDirectory(pool);
            return 0;
        });
        var (loaded, setAside) = Stage("definitions", domains.Load);
        log.LogInformation("loaded {Count} definitions ({SetAside} set aside as corrupt)", loaded, setAside.Count);

        var sw = Stopwatch.StartNew();
        var all = domains.Registry.List();
        var lifecycle = services.GetRequiredService<DomainLifecycle>();
        await Task.WhenAll(drivers.All.Select(d => d.InitializeAsync(all, lifecycle, cancellationToken))).ConfigureAwait(false);
        log.LogInformation("stage drivers: {Ms:0.0} ms ({Drivers})", sw.Elapsed.TotalMilliseconds,
            string.Join(", ", drivers.All.Select(d => $"{d.Kind.ToString().ToLowerInvariant()}: {(d.Info.Available ? "available" : d.Info.Detail)}")));

        Stage("workers", () => { scheduler.Start(); return 0; });
        domains.Autostart();

        _stopping = lifetime.ApplicationStopping.Register(BeginShutdown);
        _started = lifetime.ApplicationStarted.Register(() =>
        {
            status.SetReady();
            services.GetRequiredService<EventBus>().Publish(EventTypes.DaemonState, null, new DaemonEventData("ready"));
            log.LogInformation("virtd ready in {Ms:0.0} ms", (services.GetRequiredService<TimeProvider>().GetUtcNow() - status.StartedAt).TotalMilliseconds);
        });
        log.LogInformation("start-up stages done in {Ms:0.0} ms", total.Elapsed.TotalMilliseconds);
    }

    /// <summary>Phase 1: returns at once. Readiness false, queued jobs cancelled, running jobs' tokens cancelled, drivers signalled.</summary>
    private void BeginShutdown()
    {
        status.SetStopping();
        services.GetRequiredService<EventBus>().Publish(EventTypes.DaemonState, null, new DaemonEventData("stopping"));
        services.GetRequiredService<JobScheduler>().BeginShutdown();
        foreach (var driver in services.GetRequiredService<DriverCatalog>().All)
        {
            try { driver.ShutdownPrepare(); }
            catch (Exception e) { log.LogError(e, "{Driver} driver: shutdown prepare failed", driver.Kind); }
        }
    }

    /// <summary>
    /// Phase 2: waits for the workers and every driver together, bounded by ShutdownTimeout. Runs once: the host
    /// may stop twice at the same time (an explicit <c>StopAsync</c> while <c>RunAsync</c>, woken by
    /// ApplicationStopping, stops too and then disposes the service provider), so a second call waits for the first.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        lock (_stopLock) return _stop ??= StopOnceAsync(cancellationToken);
    }

    private async Task StopOnceAsync(CancellationToken cancellationToken)
    {
        // Resolved before anything awaits, while the provider is certainly alive.
        var options = services.GetRequiredService<VirtdOptions>();
        var scheduler = services.GetRequiredService<JobScheduler>();
        var drivers = services.GetRequiredService<DriverCatalog>();
        BeginShutdownOnce();
        var sw = Stopwatch.StartNew();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(options.ShutdownTimeout);
        var waits = new List<Task> { scheduler.DrainAsync(deadline.Token) };
        waits.AddRange(drivers.All.Select(d => d.ShutdownWaitAsync(deadline.Token)));
        try
        {
            await Task.WhenAll(waits).WaitAsync(deadline.Token).ConfigureAwait(false);
            log.LogInformation("shutdown: workers and drivers stopped in {Ms:0.0} ms", sw.Elapsed.TotalMilliseconds);
        }
        catch (OperationCanceledException)
        {
            foreach (var job in scheduler.RunningJobs())
                log.LogError("shutdown timeout: job {JobId} ({Kind}) on {Domain} still running after {Age:0.0} s",
                    job.Id, job.Kind, job.Domain.Name, (DateTimeOffset.UtcNow - (job.StartedAt ?? job.CreatedAt)).TotalSeconds);
            Environment.ExitCode = 3;
        }
        foreach (var driver in drivers.All.Reverse())
        {
            try { await driver.CleanupAsync().ConfigureAwait(false); }
            catch (Exception e) { log.LogError(e, "{Driver} driver: cleanup failed", driver.Kind); }
        }
        await _stopping.DisposeAsync().ConfigureAwait(false);
        await _started.DisposeAsync().ConfigureAwait(false);
    }

    private int _shutdownBegun;

    private void BeginShutdownOnce()
    {
        if (status.State == DaemonState.Stopping || Interlocked.Exchange(ref _shutdownBegun, 1) == 1) return;
        BeginShutdown();
    }

    private T Stage<T>(string name, Func<T> action)
    {
        var sw = Stopwatch.StartNew();
        var result = action();
        log.LogInformation("stage {Stage}: {Ms:0.0} ms", name, sw.Elapsed.TotalMilliseconds);
        return result;
    }
}
