using System.Collections.Concurrent;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;

namespace Virtd.Core.Observability;

/// <summary>Configuration section <c>Metrics</c>.</summary>
public sealed class MetricsOptions
{
    /// <summary>Serve <c>GET /metrics</c> and collect per-VM figures; <c>false</c> runs no metrics pipeline at all.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Unauthenticated scrapes of <c>/metrics</c> from loopback (and the Unix sockets) are allowed.</summary>
    public bool Anonymous { get; set; }

    /// <summary>
    /// Include ASP.NET Core's request meter (<c>http.server.request.duration</c>, active requests), recorded on every request
    /// and not free: off by default; read when the daemon starts.
    /// </summary>
    public bool AspNetCore { get; set; }

    public const int DefaultDomainSeries = 1024;

    /// <summary>
    /// Domains (or disks of running domains) each per-VM metric (<c>virtd_domain_*</c>) has series for. The series are
    /// allocated up front (about 100 bytes each) when the daemon starts; past the limit, new ones are summed in one overflow
    /// series (<c>otel_metric_overflow="true"</c>). Raise it on a host with more domains.
    /// </summary>
    public int DomainSeries { get; set; } = DefaultDomainSeries;

    /// <summary>How often each running VM's figures are read.</summary>
    public TimeSpan StatsInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Bound on one VM's read; a VM that does not answer in time keeps its last figures, marked stale.</summary>
    public TimeSpan StatsTimeout { get; set; } = TimeSpan.FromSeconds(2);
}

/// <summary>One VM's last figures: when they were read, and whether the latest read failed or has not answered (stale).</summary>
public sealed record DomainStatsReading(Guid Uuid, string Name, VmStats? Stats, DateTimeOffset? ReadAt, bool Stale);

/// <summary>
/// Reads every running VM's figures in the background, each VM on its own and none under its job gate, so neither a
/// scrape nor <c>GET .../stats</c> ever waits on a VM: they read what was last collected. A read is bounded by
/// <c>Metrics:StatsTimeout</c>; a VM whose read fails, times out or is still running at the next round keeps its last
/// figures, marked stale. No VM gets a second read while its first is pending. The loop and every read are owned
/// here and awaited at stop.
/// </summary>
public sealed class DomainStatsCollector(DomainRegistry registry, MetricsOptions options, TimeProvider time, ILogger<DomainStatsCollector> log)
    : BackgroundService
{
    private readonly ConcurrentDictionary<Guid, DomainStatsReading> _readings = new();
    private readonly ConcurrentDictionary<Guid, Task> _reading = new();

    /// <summary>The last reading of a domain's VM, or null when it runs no VM (or none has been read yet).</summary>
    public DomainStatsReading? Find(Guid uuid) => _readings.TryGetValue(uuid, out var r) ? r : null;

    /// <summary>Every reading kept now (one per running VM).</summary>
    public ICollection<DomainStatsReading> Readings => _readings.Values;

    /// <summary>Rounds run so far (for tests that wait for the next one).</summary>
    public long Rounds => Interlocked.Read(ref _rounds);

    private long _rounds;

    /// <summary>Reads started and not yet ended (for tests that must not start a round while one is pending).</summary>
    internal int PendingReads => _reading.Count;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.StatsInterval, time);
        try
        {
            do Round(stoppingToken);
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
        finally
        {
            // Every read ends by its own deadline, sooner now that the stop token is cancelled.
            await Task.WhenAll(_reading.Values).ConfigureAwait(false);
        }
    }

    /// <summary>Starts a read of each running VM that has none pending; forgets domains that no longer run a VM.</summary>
    internal void Round(CancellationToken stoppingToken)
    {
        var live = new HashSet<Guid>();
        foreach (var domain in registry.List())
        {
            var view = domain.View;
            if (view.Instance is not { } vm || view.Runtime.State is DomainState.ShutOff or DomainState.Crashed) continue;
            live.Add(domain.Uuid);
            if (_reading.ContainsKey(domain.Uuid))
            {
                MarkStale(domain.Uuid, domain.Name); // the last round's read has not answered yet
                continue;
            }
            var read = ReadAsync(domain, vm, stoppingToken);
            _reading[domain.Uuid] = read;
            _ = read.ContinueWith((_, uuid) => _reading.TryRemove((Guid)uuid!, out var _), domain.Uuid, CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        foreach (var uuid in _readings.Keys)
        {
            if (!live.Contains(uuid)) _readings.TryRemove(uuid, out _);
        }
        Interlocked.Increment(ref _rounds);
    }

    private async Task ReadAsync(DomainObject domain, IVmInstance vm, CancellationToken stoppingToken)
    {
        await Task.Yield();
        using var deadline = new CancellationTokenSource(options.StatsTimeout, time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken, deadline.Token);
        try
        {
            var stats = await vm.ReadStatsAsync(linked.Token).WaitAsync(linked.Token).ConfigureAwait(false);
            // The VM may have ended while it was read: keep figures only of the VM the domain runs now.
            if (ReferenceEquals(domain.Instance, vm)) _readings[domain.Uuid] = new DomainStatsReading(domain.Uuid, domain.Name, stats, time.GetUtcNow(), false);
        }
        catch (Exception e) when (e is OperationCanceledException or VirtdException or NotSupportedException)
        {
            if (!stoppingToken.IsCancellationRequested && e is not NotSupportedException)
                log.LogDebug("figures of domain {Domain} not read: {Error}", domain.Name, e.Message);
            MarkStale(domain.Uuid, domain.Name);
        }
    }

    private void MarkStale(Guid uuid, string name) =>
        _readings.AddOrUpdate(uuid, static (u, n) => new DomainStatsReading(u, n, null, null, true),
            static (_, r, _) => r.Stale ? r : r with { Stale = true }, name);
}
