using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Api.Hosting;

/// <summary>
/// Idle exit (<c>IdleTimeout</c>, libvirtd <c>--timeout</c>): once the daemon is ready, stops it cleanly when
/// no VM runs, no job is queued or running and no request is in flight, and none of that has been so for
/// IdleTimeout. A long-lived request (an event stream, a <c>?wait=</c> long poll) is in flight, so an open
/// client keeps the daemon up. Requests are counted by <see cref="IdleExit.UseIdleTracking"/>; VMs and jobs
/// are looked at on every check. The loop is a hosted service: the host awaits it on stop.
/// </summary>
public sealed class IdleMonitor(
    VirtdOptions options,
    DomainRegistry registry,
    JobScheduler jobs,
    DaemonStatus status,
    IHostApplicationLifetime lifetime,
    TimeProvider time,
    ILogger<IdleMonitor> log) : BackgroundService
{
    private int _inFlight;
    private long _lastActivity = time.GetTimestamp();
    private bool _busyAtLastCheck = true;

    public void RequestStarted()
    {
        Interlocked.Increment(ref _inFlight);
        Touch();
    }

    public void RequestEnded()
    {
        Touch();
        Interlocked.Decrement(ref _inFlight);
    }

    /// <summary>Why the daemon is not idle right now, or null when it is.</summary>
    public string? BusyReason() =>
        Volatile.Read(ref _inFlight) is > 0 and var requests ? $"{requests} requests in flight" : CheckedBusyReason();

    /// <summary>
    /// One check: true when the daemon has been idle for at least IdleTimeout. Requests are timed exactly; what
    /// is only looked at here (readiness, jobs, VMs) counts as idle from the first check that finds it so.
    /// </summary>
    public bool IdleLongEnough()
    {
        if (CheckedBusyReason() is not null)
        {
            _busyAtLastCheck = true;
            return false;
        }
        if (_busyAtLastCheck)
        {
            _busyAtLastCheck = false;
            Touch();
        }
        return Volatile.Read(ref _inFlight) == 0 && IdleFor >= options.IdleTimeout;
    }

    private string? CheckedBusyReason()
    {
        if (status.State != DaemonState.Ready) return status.State.ToString().ToLowerInvariant();
        if (jobs.QueuedCount + jobs.RunningCount is > 0 and var queued) return $"{queued} jobs queued or running";
        foreach (var d in registry.List())
            if (d.Runtime.IsActive || d.Instance is not null) return $"domain {d.Name} is active";
        return null;
    }

    public TimeSpan IdleFor => time.GetElapsedTime(Interlocked.Read(ref _lastActivity));

    /// <summary>When a request last started or ended (a <see cref="TimeProvider"/> timestamp).</summary>
    public long LastActivity => Interlocked.Read(ref _lastActivity);

    /// <summary>Time between checks: a quarter of IdleTimeout, at most 5 s, at least 100 ms.</summary>
    public static TimeSpan CheckInterval(TimeSpan idleTimeout) =>
        TimeSpan.FromTicks(Math.Clamp(idleTimeout.Ticks / 4, TimeSpan.TicksPerMillisecond * 100, TimeSpan.TicksPerSecond * 5));

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (options.IdleTimeout <= TimeSpan.Zero) return;
        using var timer = new PeriodicTimer(CheckInterval(options.IdleTimeout), time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                if (!IdleLongEnough()) continue;
                log.LogInformation("idle for {Idle:0.0} s (IdleTimeout {Timeout}): no VM running, no job, no request; stopping",
                    IdleFor.TotalSeconds, options.IdleTimeout);
                lifetime.StopApplication();
                return;
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The daemon is stopping for another reason.
        }
    }

    private void Touch() => Interlocked.Exchange(ref _lastActivity, time.GetTimestamp());
}

public static class IdleExit
{
    /// <summary>The idle monitor, as a singleton the request counter finds and as a hosted service.</summary>
    public static IHostApplicationBuilder AddIdleExit(this IHostApplicationBuilder builder)
    {
        builder.Services.AddSingleton<IdleMonitor>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<IdleMonitor>());
        builder.Services.AddSingleton<MemoryTrimmer>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<MemoryTrimmer>());
        return builder;
    }

    /// <summary>
    /// Counts every request while it is in flight, so that a connected client keeps the daemon up. Health probes
    /// (<c>/healthz</c>, <c>/readyz</c>) do not count: a service manager polling them must not keep an idle daemon alive.
    /// </summary>
    public static IApplicationBuilder UseIdleTracking(this IApplicationBuilder app)
    {
        // The daemon's own singleton, from the root provider (no request scope is made for it), at the first request.
        IdleMonitor? monitor = null;
        return app.Use((http, next) =>
        {
            if (http.Request.Path.StartsWithSegments("/healthz") || http.Request.Path.StartsWithSegments("/readyz")) return next(http);
            var idle = monitor ??= app.ApplicationServices.GetRequiredService<IdleMonitor>();
            idle.RequestStarted();
            Task rest;
            try { rest = next(http); }
            catch
            {
                idle.RequestEnded();
                throw;
            }
            if (rest.IsCompleted)
            {
                idle.RequestEnded();
                return rest;
            }
            return EndedAsync(rest, idle);
        });
    }

    private static async Task EndedAsync(Task rest, IdleMonitor idle)
    {
        try { await rest.ConfigureAwait(false); }
        finally { idle.RequestEnded(); }
    }
}
