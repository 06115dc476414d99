using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting.Internal;
using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Api.Hosting;
using Virtd.Testing;
using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Api.Tests;

/// <summary>The idle-exit rule on a manual clock, over the real registry, scheduler and simulated driver.</summary>
public sealed class IdleMonitorTests : IAsyncDisposable
{
    private static readonly TimeSpan IdleTimeout = TimeSpan.FromMinutes(10);
    private readonly CoreHarness _h = new();
    private readonly DaemonStatus _status;
    private readonly ApplicationLifetime _lifetime = new(NullLogger<ApplicationLifetime>.Instance);
    private readonly IdleMonitor _idle;

    public IdleMonitorTests()
    {
        _h.Options.IdleTimeout = IdleTimeout;
        _status = new DaemonStatus(_h.Time);
        _idle = new IdleMonitor(_h.Options, _h.Registry, _h.Scheduler, _status, _lifetime, _h.Time, NullLogger<IdleMonitor>.Instance);
    }

    [Fact]
    public void NothingRunning_IsIdleOnceIdleTimeoutHasPassedSinceTheFirstIdleCheck()
    {
        _status.SetReady();
        _h.Time.Advance(TimeSpan.FromHours(1)); // before the first check: not counted

        Assert.False(_idle.IdleLongEnough());
        _h.Time.Advance(IdleTimeout - TimeSpan.FromSeconds(1));
        Assert.False(_idle.IdleLongEnough());
        _h.Time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(_idle.IdleLongEnough());
    }

    [Fact]
    public void WhileStarting_IsNeverIdle()
    {
        Assert.False(_idle.IdleLongEnough());
        _h.Time.Advance(IdleTimeout * 2);

        Assert.False(_idle.IdleLongEnough());
        Assert.Equal("starting", _idle.BusyReason());
    }

    [Fact]
    public async Task RunningVm_KeepsTheDaemonUp_AndIdleTimeCountsFromItsStop()
    {
        _status.SetReady();
        await _h.DefineRunningAsync("vm");

        _h.Time.Advance(IdleTimeout * 3);
        Assert.False(_idle.IdleLongEnough());
        Assert.Equal("domain vm is active", _idle.BusyReason());

        Assert.Equal(JobState.Succeeded, (await _h.RunAsync("vm", new DestroyCommand())).State);
        Assert.False(_idle.IdleLongEnough());
        _h.Time.Advance(IdleTimeout);
        Assert.True(_idle.IdleLongEnough());
    }

    [Fact]
    public async Task QueuedJob_KeepsTheDaemonUp()
    {
        await using var h = new CoreHarness(startWorkers: false);
        h.Options.IdleTimeout = IdleTimeout;
        var status = new DaemonStatus(h.Time);
        status.SetReady();
        var idle = new IdleMonitor(h.Options, h.Registry, h.Scheduler, status, _lifetime, h.Time, NullLogger<IdleMonitor>.Instance);
        await h.DefineAsync("vm");
        var job = h.Service.Submit("vm", new StartCommand());

        h.Time.Advance(IdleTimeout * 2);
        Assert.False(idle.IdleLongEnough());
        Assert.Equal("1 jobs queued or running", idle.BusyReason());

        h.Scheduler.Cancel(job, "test");
        Assert.False(idle.IdleLongEnough());
        h.Time.Advance(IdleTimeout);
        Assert.True(idle.IdleLongEnough());
    }

    [Fact]
    public void RequestInFlight_KeepsTheDaemonUp_AndIdleTimeCountsFromItsEnd()
    {
        _status.SetReady();
        Assert.False(_idle.IdleLongEnough());
        _idle.RequestStarted();

        _h.Time.Advance(IdleTimeout * 2);
        Assert.False(_idle.IdleLongEnough());
        _idle.RequestEnded();
        _h.Time.Advance(IdleTimeout - TimeSpan.FromSeconds(1));
        Assert.False(_idle.IdleLongEnough());
        _h.Time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(_idle.IdleLongEnough());
    }

    [Fact]
    public async Task Loop_WhenIdle_StopsTheApplicationNoEarlierThanIdleTimeout()
    {
        var interval = IdleMonitor.CheckInterval(IdleTimeout);
        DateTimeOffset? stoppedAt = null;
        _lifetime.ApplicationStopping.Register(() => stoppedAt = _h.Time.GetUtcNow());
        await _idle.StartAsync(CancellationToken.None);
        _status.SetReady();
        var readyAt = _h.Time.GetUtcNow();

        await CoreHarness.WaitUntilAsync(() =>
        {
            if (stoppedAt is null) _h.Time.Advance(interval);
            return stoppedAt is not null;
        }, "the idle daemon stops itself");

        Assert.True(stoppedAt - readyAt >= IdleTimeout, $"stopped after {stoppedAt - readyAt} of idleness");
        await _idle.ExecuteTask!.WaitAsync(CoreHarness.Patience);
    }

    [Fact]
    public async Task Loop_WhenTheDaemonStopsForAnotherReason_EndsAndIsAwaited()
    {
        _status.SetReady();
        await _idle.StartAsync(CancellationToken.None);
        await CoreHarness.WaitUntilAsync(() => _h.Time.ArmedTimers == 1, "the loop waits for its next check");

        using var bound = new CancellationTokenSource(CoreHarness.Patience);
        await _idle.StopAsync(bound.Token);

        Assert.True(_idle.ExecuteTask!.IsCompletedSuccessfully);
        Assert.Equal(0, _h.Time.ArmedTimers);
        Assert.False(_lifetime.ApplicationStopping.IsCancellationRequested);
    }

    [Fact]
    public async Task Loop_WhenIdleTimeoutIsOff_ArmsNoTimer()
    {
        _h.Options.IdleTimeout = TimeSpan.Zero;
        _status.SetReady();

        await _idle.StartAsync(CancellationToken.None);

        await _idle.ExecuteTask!.WaitAsync(CoreHarness.Patience);
        Assert.Equal(0, _h.Time.ArmedTimers);
    }

    [Theory]
    [InlineData("00:00:01", 250)]
    [InlineData("00:00:02", 500)]
    [InlineData("00:00:20", 5000)]
    [InlineData("7.00:00:00", 5000)]
    public void CheckInterval_IsAQuarterOfIdleTimeout_AtMostFiveSeconds(string idleTimeout, int expectedMs) =>
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), IdleMonitor.CheckInterval(TimeSpan.Parse(idleTimeout, System.Globalization.CultureInfo.InvariantCulture)));

    [Fact]
    public async Task OpenEventStream_IsARequestInFlight_UntilTheClientCloses()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var idle = app.Services.GetRequiredService<IdleMonitor>();
        await CoreHarness.WaitUntilAsync(() => idle.BusyReason() is null, "the daemon is ready and idle");

        var sse = await SseClient.OpenAsync(http, "/api/v1/events");
        await sse.NextFrameAsync(VirtdHttp.Patience);
        Assert.Equal("1 requests in flight", idle.BusyReason());

        await sse.DisposeAsync();
        await CoreHarness.WaitUntilAsync(() => idle.BusyReason() is null, "the closed stream no longer counts");
    }

    [Fact]
    public async Task HealthProbes_DoNotCountAsActivity_OtherRequestsDo()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var idle = app.Services.GetRequiredService<IdleMonitor>();
        await CoreHarness.WaitUntilAsync(() => idle.BusyReason() is null, "the daemon is ready and idle");
        await CoreHarness.WaitUntilAsync(() => idle.IdleFor > TimeSpan.FromMilliseconds(200), "some idle time");

        await http.GetAsync("/healthz");
        await http.GetAsync("/readyz");
        Assert.True(idle.IdleFor > TimeSpan.FromMilliseconds(200), "a health probe reset the idle time");

        await http.GetAsync("/api/v1/domains");
        Assert.True(idle.IdleFor < TimeSpan.FromMilliseconds(200), "a real request did not count");
    }

    public async ValueTask DisposeAsync()
    {
        _idle.Dispose();
        await _h.DisposeAsync();
    }
}
