using System.Diagnostics;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Persistence;

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

    /// <summary>
    /// The modes of what the daemon keeps, set at every start whatever they were created with: the state directory and
    /// the pools 0711 (QEMU's user may pass through to a kernel it is given, nobody may list), definitions, job journal
    /// and logs 0700, the run directory 0755 (like /run/libvirt: everyone reaches the read-only socket). A run directory
    /// that another user already owns is refused when the daemon is not root: its sockets would be that user's to replace.
    /// </summary>
    private void SetModes(VirtdConfiguration options)
    {
        var run = options.Virtd.RunDirectory;
        if (Ownership.EffectiveUid != 0 && Directory.Exists(run) && Ownership.OwnerOf(run) is { } owner && owner != Ownership.EffectiveUid)
            throw new ConfigurationException($"RunDirectory: {run} belongs to another user (uid {owner}); choose another directory or remove it");
        Ownership.SetDirectoryMode(options.Virtd.StateDirectory, Ownership.Traversable);
        Ownership.SetDirectoryMode(options.Virtd.DomainsDirectory, Ownership.Private);
        Ownership.SetDirectoryMode(Path.Combine(options.Virtd.StateDirectory, "jobs"), Ownership.Private);
        Ownership.SetDirectoryMode(Path.Combine(options.Virtd.StateDirectory, "log"), Ownership.Private);
        Ownership.SetDirectoryMode(run, Ownership.Public);
        foreach (var pool in options.Storage.Pools.Values.Distinct())
        {
            if (!Ownership.SetDirectoryMode(pool, Ownership.Traversable))
                log.LogInformation("storage pool {Pool} belongs to another user: its mode is left as it is", pool);
        }
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        StartupClock.Mark("services");
        var total = Stopwatch.StartNew();
        var options = Stage("configuration", () => VirtdConfiguration.Resolve(services));
        var domains = services.GetRequiredService<DomainService>();
        var drivers = services.GetRequiredService<DriverCatalog>();
        var scheduler = services.GetRequiredService<JobScheduler>();

        Stage("directories", () =>
        {
            SetModes(options);
            services.GetRequiredService<Virtd.Core.Storage.VolumeService>().RemoveLeftovers();
            return 0;
        });
        // The journal was read while the host was built (JournalPreload); what is left of its stage runs while the
        // definitions load and the drivers take their VMs back: neither needs the other.
        var journal = options.Jobs.Journal ? services.GetRequiredService<JobJournal>() : null;
        var preload = services.GetRequiredService<JournalPreload>();
        var reading = journal is null ? null : Task.Run(() => StageAsync("job journal", () => preload.RecoverAsync(journal)), cancellationToken);
        var sw = Stopwatch.StartNew();
        try
        {
            var (loaded, setAside) = Stage("definitions", domains.Load);
            log.LogInformation("loaded {Count} definitions ({SetAside} set aside as corrupt)", loaded, setAside.Count);
            sw.Restart();
            var all = domains.Registry.List();
            var lifecycle = services.GetRequiredService<DomainLifecycle>();
            await Task.WhenAll(drivers.All.Select(d => d.InitializeAsync(all, lifecycle, cancellationToken))).ConfigureAwait(false);
        }
        catch when (reading is not null)
        {
            await Task.WhenAny(reading).ConfigureAwait(false); // start-up fails: the read ends before it does
            throw;
        }
        log.LogInformation("stage drivers: {Ms:0.0} ms ({Drivers})", sw.Elapsed.TotalMilliseconds,
            string.Join(", ", drivers.All.Select(d => $"{d.Kind.ToString().ToLowerInvariant()}: {(d.Info.Available ? "available" : d.Info.Detail)}")));

        if (journal is not null && reading is not null)
        {
            var recovery = await reading.ConfigureAwait(false);
            Stage("jobs", () => RecoverJobs(journal, recovery));
        }
        Stage("workers", () => { scheduler.Start(); return 0; });
        domains.Autostart();

        _stopping = lifetime.ApplicationStopping.Register(BeginShutdownOnce);
        _started = lifetime.ApplicationStarted.Register(() =>
        {
            status.SetReady();
            services.GetRequiredService<EventBus>().Publish(EventTypes.DaemonState, null, new DaemonEventData("ready"));
            StartupClock.Mark("ready");
            log.LogInformation("virtd ready in {Ms:0.0} ms (from main: {Marks})", (services.GetRequiredService<TimeProvider>().GetUtcNow() - status.StartedAt).TotalMilliseconds,
                StartupClock.Summary());
        });
        log.LogInformation("start-up stages done in {Ms:0.0} ms", total.Elapsed.TotalMilliseconds);
        StartupClock.Mark("stages");
    }

    /// <summary>
    /// After the drivers have taken the running VMs back: every job the journal knows is in the store again (those the
    /// restart ended as cancelled or interrupted, with the state each domain was found in), and the journal is
    /// rewritten from that and opened for new records.
    /// </summary>
    private int RecoverJobs(JobJournal journal, JobRecovery recovery)
    {
        var store = services.GetRequiredService<JobStore>();
        var keys = services.GetRequiredService<IdempotencyKeys>();
        var (jobs, ended) = recovery.Resolve(services.GetRequiredService<DomainRegistry>(), services.GetRequiredService<EventBus>(),
            services.GetRequiredService<TimeProvider>().GetUtcNow());
        store.Restore(jobs);
        keys.Restore(recovery.KeyRecords);
        journal.Start(() => [.. store.JournalRecords(), .. keys.Records()]);
        log.LogInformation("job journal: {Jobs} jobs ({Interrupted} interrupted and {Cancelled} cancelled by the restart), {Keys} idempotency keys",
            jobs.Count, ended.Count(r => r.State == JobState.Interrupted), ended.Count(r => r.State == JobState.Cancelled), keys.Count);
        return jobs.Count;
    }

    /// <summary>
    /// Phase 1, on ApplicationStopping: returns at once and blocks on nothing. Readiness false (writes get 503
    /// <c>shutting-down</c>), queued jobs end <c>cancelled</c>, running jobs' tokens are cancelled, every driver's
    /// <c>ShutdownPrepare</c> runs (all in parallel, or after the guests are shut down with
    /// <c>Guests:OnDaemonStop=shutdown</c>), and event streams end after the events published so far.
    /// </summary>
    private void BeginShutdown()
    {
        var sw = Stopwatch.StartNew();
        status.SetStopping();
        var bus = services.GetRequiredService<EventBus>();
        bus.Publish(EventTypes.DaemonState, null, new DaemonEventData("stopping"));
        var scheduler = services.GetRequiredService<JobScheduler>();
        var queued = scheduler.QueuedCount;
        scheduler.BeginShutdown();
        var guests = services.GetRequiredService<GuestsOnStop>();
        _driversStopping = guests.Policy == GuestStopPolicy.Shutdown ? StopGuestsThenDriversAsync(guests, scheduler) : PrepareDriversAsync();
        _requestsEnding = EndLongRequestsAsync(bus, scheduler);
        log.LogInformation("shutdown phase 1 in {Ms:0.0} ms: {Queued} queued job(s) cancelled, {Running} running job(s) signalled, guests: {Policy}",
            sw.Elapsed.TotalMilliseconds, queued, scheduler.RunningCount, guests.Policy.ToString().ToLowerInvariant());
    }

    /// <summary>How long event streams and long polls wait for running jobs to end (their tokens are cancelled) before ending.</summary>
    private static readonly TimeSpan JobsGrace = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Event streams and <c>?wait=</c> long polls end once the running jobs have ended (so they carry the outcome),
    /// or after <see cref="JobsGrace"/> when a job does not: they must not hold the listener open.
    /// </summary>
    private async Task EndLongRequestsAsync(EventBus bus, JobScheduler scheduler)
    {
        using var grace = new CancellationTokenSource(JobsGrace);
        try { await scheduler.DrainAsync(grace.Token).ConfigureAwait(false); }
        catch (OperationCanceledException) { log.LogWarning("shutdown: jobs still running after {Grace}; ending event streams and long polls anyway", JobsGrace); }
        bus.Close();
        status.SetRequestsEnding();
    }

    /// <summary>Every driver's ShutdownPrepare at the same time, none waiting for another.</summary>
    private Task PrepareDriversAsync() =>
        Task.WhenAll(services.GetRequiredService<DriverCatalog>().All.Select(driver => Task.Run(() =>
        {
            try { driver.ShutdownPrepare(); }
            catch (Exception e) { log.LogError(e, "{Driver} driver: shutdown prepare failed", driver.Kind); }
        })));

    /// <summary>With <c>Guests:OnDaemonStop=shutdown</c>: jobs end first, then the VMs are stopped, then the drivers let go.</summary>
    private async Task StopGuestsThenDriversAsync(GuestsOnStop guests, JobScheduler scheduler)
    {
        await Task.Yield();
        var options = services.GetRequiredService<VirtdConfiguration>();
        using var bound = new CancellationTokenSource(options.StopBound);
        try
        {
            await scheduler.DrainAsync(bound.Token).ConfigureAwait(false);
            await guests.ShutdownAllAsync(bound.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            log.LogError("shutdown: the guests were not all stopped within {Bound}", options.StopBound);
        }
        await PrepareDriversAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Phase 2: waits for the workers and every driver together, bounded by ShutdownTimeout (plus
    /// Guests:OverallTimeout when guests are shut down). On timeout it logs what still runs and the daemon exits
    /// anyway with code 3. Then cleanup, in reverse order. Runs once: the host may stop twice at the same time
    /// (an explicit <c>StopAsync</c> while <c>RunAsync</c>, woken by ApplicationStopping, stops too and then
    /// disposes the service provider), so a second call waits for the first.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        lock (_stopLock) return _stop ??= StopOnceAsync(cancellationToken);
    }

    private async Task StopOnceAsync(CancellationToken cancellationToken)
    {
        // Resolved before anything awaits, while the provider is certainly alive.
        var options = services.GetRequiredService<VirtdConfiguration>();
        var scheduler = services.GetRequiredService<JobScheduler>();
        var drivers = services.GetRequiredService<DriverCatalog>();
        var time = services.GetRequiredService<TimeProvider>();
        Task driversStopping, requestsEnding;
        lock (_stopLock)
        {
            BeginShutdownOnce();
            (driversStopping, requestsEnding) = (_driversStopping!, _requestsEnding!);
        }
        var sw = Stopwatch.StartNew();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(options.StopBound);
        var waits = new List<Task> { scheduler.DrainAsync(deadline.Token), driversStopping, requestsEnding };
        waits.AddRange(drivers.All.Select(async d =>
        {
            await driversStopping.ConfigureAwait(false);
            await d.ShutdownWaitAsync(deadline.Token).ConfigureAwait(false);
        }));
        try
        {
            await Task.WhenAll(waits).WaitAsync(deadline.Token).ConfigureAwait(false);
            log.LogInformation("shutdown phase 2: workers and drivers stopped in {Ms:0.0} ms", sw.Elapsed.TotalMilliseconds);
        }
        catch (OperationCanceledException)
        {
            log.LogError("shutdown phase 2 timed out after {Bound}; exiting anyway with code 3", options.StopBound);
            var now = time.GetUtcNow();
            foreach (var job in scheduler.RunningJobs())
                log.LogError("shutdown timeout: job {JobId} ({Kind}) on {Domain} still running after {Age:0.0} s",
                    job.Id, job.Kind.ToString().ToLowerInvariant(), job.Domain.Name, (now - (job.StartedAt ?? job.CreatedAt)).TotalSeconds);
            foreach (var driver in drivers.All)
            {
                foreach (var work in driver.PendingWork())
                    log.LogError("shutdown timeout: {Driver} driver: {Work}", driver.Kind.ToString().ToLowerInvariant(), work);
            }
            Environment.ExitCode = 3;
        }
        if (options.Jobs.Journal)
        {
            // The jobs' last records (those cancelled by the stop included) go to disk before the daemon exits.
            try { await services.GetRequiredService<JobJournal>().StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false); }
            catch (TimeoutException) { log.LogError("shutdown: the job journal did not flush within 2 s"); }
        }
        foreach (var driver in drivers.All.Reverse())
        {
            try { await driver.CleanupAsync().ConfigureAwait(false); }
            catch (Exception e) { log.LogError(e, "{Driver} driver: cleanup failed", driver.Kind); }
        }
        await _stopping.DisposeAsync().ConfigureAwait(false);
        await _started.DisposeAsync().ConfigureAwait(false);
        log.LogInformation("virtd stopped ({Ms:0.0} ms after phase 2 began)", sw.Elapsed.TotalMilliseconds);
    }

    // Set by phase 1, which runs once under _stopLock (it awaits nothing), so phase 2 always finds them.
    private Task? _driversStopping;
    private Task? _requestsEnding;

    private void BeginShutdownOnce()
    {
        lock (_stopLock)
        {
            if (_driversStopping is null) BeginShutdown();
        }
    }

    private T Stage<T>(string name, Func<T> action)
    {
        var sw = Stopwatch.StartNew();
        var result = action();
        log.LogInformation("stage {Stage}: {Ms:0.0} ms", name, sw.Elapsed.TotalMilliseconds);
        return result;
    }

    private async Task<T> StageAsync<T>(string name, Func<Task<T>> action)
    {
        var sw = Stopwatch.StartNew();
        var result = await action().ConfigureAwait(false);
        log.LogInformation("stage {Stage}: {Ms:0.0} ms", name, sw.Elapsed.TotalMilliseconds);
        return result;
    }
}
