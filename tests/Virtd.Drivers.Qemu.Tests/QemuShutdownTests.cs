using System.Diagnostics;
using Virtd.Testing;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Stopping the daemon (a real process, real signals) while real VMs run.</summary>
[Collection(QemuCollection.Name)]
public class QemuShutdownTests
{
    private static readonly string[] Base = ["--DefaultDriver", "qemu", "--Logging:LogLevel:Default", "Warning", "--Logging:LogLevel:Virtd", "Information"];

    [Fact]
    public async Task Sigterm_WithASuspendInFlightOnAHungQemu_ExitsWithinTheBound_AndTheNextDaemonTakesTheVmsBack()
    {
        QemuHost.RequireQemu();
        string[] args = [.. Base, "--ShutdownTimeout", "00:00:03", "--Qemu:MonitorTimeout", "00:01:00", "--Qemu:ReconnectTimeout", "00:00:05"];
        var first = DaemonProcess.Start(args);
        var run = first.RunDirectory;
        try
        {
            await first.WaitReadyAsync();
            var pids = new Dictionary<string, int>();
            foreach (var name in new[] { "hung", "fine" })
            {
                await first.Http.DefineAsync(new { name, memoryMiB = 64 });
                Assert.Equal("succeeded", (await first.Http.ActAsync(name, "start", wait: 60)).Str("state"));
                pids[name] = (await first.Http.GetDomainAsync(name)).GetProperty("pid").GetInt32();
            }
            QemuHost.Signal(pids["hung"], "STOP");
            var suspend = (await first.Http.ActAsync("hung", "suspend")).Id();
            await first.Http.RunningJobAsync(suspend); // in flight: QEMU will not answer

            var clock = Stopwatch.StartNew();
            first.Terminate();
            var code = await first.WaitExitAsync(TimeSpan.FromSeconds(15));

            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3 + 1), $"exit took {clock.Elapsed}\n{first.Output}");
            Assert.Equal(0, code);
            Assert.True(QemuHost.IsAlive(pids["hung"]), "the hung QEMU died with the daemon");
            Assert.True(QemuHost.IsAlive(pids["fine"]), "the running QEMU died with the daemon");

            await using var second = DaemonProcess.Start(args, stateDirectory: first.StateDirectory, runDirectory: run);
            await second.WaitReadyAsync();
            var fine = await VirtdHttp.PollAsync(() => second.Http.GetDomainAsync("fine"), d => d.Str("reason") == "reconnected", "'fine' to be reconnected");
            Assert.Equal(("running", pids["fine"]), (fine.Str("state"), fine.GetProperty("pid").GetInt32()));
            Assert.Equal(pids["hung"], (await second.Http.GetDomainAsync("hung")).GetProperty("pid").GetInt32());
            Assert.Equal("succeeded", (await second.Http.ActAsync("hung", "destroy", new { timeout = 1 }, wait: 30)).Str("state"));
            Assert.False(QemuHost.IsAlive(pids["hung"]));
        }
        finally
        {
            await first.DisposeAsync();
            QemuHost.KillAll(run);
        }
    }

    [Fact]
    public async Task GuestsOnDaemonStopShutdown_PowersOffTheGuestByAcpi_DestroysTheOneThatIgnoresIt_AndExitsWithinTheBound()
    {
        QemuHost.RequireQemu();
        var images = Path.Combine(Path.GetTempPath(), $"virtd-images-{Guid.NewGuid():N}");
        Directory.CreateDirectory(images);
        string[] args = [.. Base, "--Guests:OnDaemonStop", "shutdown", "--Guests:ShutdownTimeout", "00:00:04", "--Guests:OverallTimeout", "00:00:30",
            "--ShutdownTimeout", "00:00:05", "--Storage:Pools:default", images, "--Storage:Pools:guest", TestGuest.Directory];
        await using var daemon = DaemonProcess.Start(args);
        try
        {
            await daemon.WaitReadyAsync();
            await daemon.Http.DefineAsync(TestGuest.Definition("guest"));
            await daemon.Http.DefineAsync(new { name = "deaf", memoryMiB = 64 }); // no OS: ignores the power button
            Assert.Equal("succeeded", (await daemon.Http.ActAsync("guest", "start", wait: 60)).Str("state"));
            Assert.Equal("succeeded", (await daemon.Http.ActAsync("deaf", "start", wait: 60)).Str("state"));
            var guestPid = (await daemon.Http.GetDomainAsync("guest")).GetProperty("pid").GetInt32();
            var deafPid = (await daemon.Http.GetDomainAsync("deaf")).GetProperty("pid").GetInt32();
            var console = TestGuest.ConsoleLog(Path.Combine(daemon.StateDirectory, "log"), (await daemon.Http.GetDomainAsync("guest")).GetProperty("uuid").GetGuid());
            await QemuHost.WaitUntilAsync(() => File.Exists(console) && File.ReadAllText(console).Contains(TestGuest.ReadyLine), "the guest to be ready",
                TimeSpan.FromSeconds(60));

            var clock = Stopwatch.StartNew();
            daemon.Terminate();
            var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(60));
            var took = clock.Elapsed;

            Assert.Equal(0, code);
            Assert.Contains("domain guest stopped with the daemon (acpi)", daemon.Output);
            Assert.Contains("domain deaf stopped with the daemon (sigterm)", daemon.Output);
            Assert.False(QemuHost.IsAlive(guestPid));
            Assert.False(QemuHost.IsAlive(deafPid));
            // The deaf VM had its 4 s, then SIGTERM; all well inside the bound (5 s + 30 s).
            Assert.InRange(took, TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(4 + 5));
        }
        finally
        {
            QemuHost.KillAll(daemon.RunDirectory);
            Directory.Delete(images, recursive: true);
        }
    }
}
