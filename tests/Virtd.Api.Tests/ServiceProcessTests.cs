using System.Diagnostics;
using System.Net;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>The daemon as a service manager runs it: idle exit and sd_notify, on a real child process.</summary>
public sealed class ServiceProcessTests
{
    private static readonly string[] TwoSecondsIdle = ["--IdleTimeout", "00:00:02"];

    [Fact]
    public async Task IdleTimeout_WhenNothingRuns_TheDaemonExitsByItselfWithCodeZero()
    {
        await using var daemon = DaemonProcess.Start(TwoSecondsIdle);
        await daemon.WaitReadyAsync();
        // A request (health probes do not count) restarts the idle clock: the daemon cannot exit sooner than 2 s after
        // its answer, so not sooner than 2 s after this stopwatch started, however slow the machine is.
        var idle = Stopwatch.StartNew();
        (await daemon.Http.GetAsync("/api/v1/host")).EnsureSuccessStatusCode();

        var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(15));

        Assert.Equal(0, code);
        Assert.True(idle.Elapsed >= TimeSpan.FromSeconds(1.95), $"exited {idle.Elapsed} after a request; IdleTimeout is 2 s");
        Assert.Contains("(IdleTimeout 00:00:02)", daemon.Output);
    }

    [Fact]
    public async Task IdleTimeout_WithARunningVm_TheDaemonStaysUpUntilTheVmStops()
    {
        // The VM is an autostart one, so it runs from the daemon's first moment: however slowly the test reaches the
        // daemon, there is never an idle instant for the daemon to leave by before the check.
        var state = TestDirectories.Create("virtd-proc-");
        await using (var first = DaemonProcess.Start(stateDirectory: state))
        {
            await first.WaitReadyAsync();
            var definition = VirtdHttp.Definition("vm");
            definition["driver"] = "simulated";
            definition["autostart"] = true;
            await first.Http.DefineAsync(definition);
            first.Terminate();
            Assert.Equal(0, await first.WaitExitAsync(TimeSpan.FromSeconds(15)));
        }
        await using var daemon = DaemonProcess.Start(TwoSecondsIdle, stateDirectory: state);
        await daemon.WaitReadyAsync();
        await VirtdHttp.PollAsync(async () => VirtdHttp.Parse($"\"{await daemon.Http.StateOfAsync("vm")}\""), s => s.GetString() == "running", "the autostart VM to run");

        // No request for more than twice IdleTimeout: only the running VM keeps the daemon up.
        await Task.Delay(TimeSpan.FromSeconds(5));
        Assert.False(daemon.HasExited, $"the daemon exited with a VM running:\n{daemon.Output}");
        Assert.Equal("running", await daemon.Http.StateOfAsync("vm"));

        await daemon.Http.ActAsync("vm", "destroy", wait: 10);
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(15)));
    }

    [Fact]
    public async Task NotifySocket_UnderSystemd_TheDaemonSendsReadyOnceServingAndStoppingOnSigterm()
    {
        using var manager = NotifySocket.Bind(Path.Combine(TestDirectories.Create("virtd-notify-"), "notify.sock"));
        await using var daemon = DaemonProcess.Start(environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = manager.Name }, underSystemd: true);

        Assert.Contains("READY=1", (await manager.ReceiveAsync(TimeSpan.FromSeconds(60))).Split('\n'));
        // Sent once the listeners are bound and the daemon is ready: /readyz answers at once, on every way in.
        using (var readyz = await daemon.Http.GetAsync("/readyz")) Assert.Equal(HttpStatusCode.OK, readyz.StatusCode);
        using (var unix = UnixHttp.Client(Path.Combine(daemon.RunDirectory, "virtd-ro.sock")))
        using (var readyz = await unix.GetAsync("/readyz"))
            Assert.Equal(HttpStatusCode.OK, readyz.StatusCode);

        daemon.Terminate();

        Assert.Contains("STOPPING=1", (await manager.ReceiveAsync()).Split('\n'));
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(15)));
    }

    [Fact]
    public async Task NotifySocket_WhenSystemdDidNotStartTheDaemon_NothingIsSent()
    {
        using var manager = NotifySocket.Bind(Path.Combine(TestDirectories.Create("virtd-notify-"), "notify.sock"));
        await using var daemon = DaemonProcess.Start(environment: new Dictionary<string, string> { ["NOTIFY_SOCKET"] = manager.Name });
        await daemon.WaitReadyAsync();

        daemon.Terminate();

        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(15)));
        Assert.Null(await manager.TryReceiveAsync(TimeSpan.FromMilliseconds(200)));
    }
}
