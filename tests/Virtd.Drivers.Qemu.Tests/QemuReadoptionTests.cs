using System.Diagnostics;
using Virtd.Testing;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>The daemon as a real process, killed and started again while its VMs run.</summary>
[Collection(QemuCollection.Name)]
public class QemuReadoptionTests
{
    private static readonly string[] QemuArgs =
        ["--DefaultDriver", "qemu", "--Qemu:MonitorTimeout", "00:00:02", "--Qemu:ReconnectTimeout", "00:00:08", "--Logging:LogLevel:Default", "Warning"];

    [Fact]
    public async Task DaemonKilled_WhileVmsRun_TheNextDaemonTakesThemBack_WithoutWaitingForAHungOne()
    {
        QemuHost.RequireQemu();
        var first = DaemonProcess.Start(QemuArgs);
        var run = first.RunDirectory;
        try
        {
            await first.WaitReadyAsync();
            var pids = new Dictionary<string, int>();
            foreach (var name in new[] { "running", "paused", "hung" })
            {
                await first.Http.DefineAsync(new { name, memoryMiB = 64 });
                Assert.Equal("succeeded", (await first.Http.ActAsync(name, "start", wait: 60)).Str("state"));
                pids[name] = (await first.Http.GetDomainAsync(name)).GetProperty("pid").GetInt32();
            }
            Assert.Equal("succeeded", (await first.Http.ActAsync("paused", "suspend", wait: 30)).Str("state"));
            QemuHost.Signal(pids["hung"], "STOP");

            await first.KillAsync();

            Assert.All(pids.Values, pid => Assert.True(QemuHost.IsAlive(pid), $"QEMU {pid} died with the daemon"));

            await using var second = DaemonProcess.Start(QemuArgs, stateDirectory: first.StateDirectory, runDirectory: run);
            var clock = Stopwatch.StartNew();
            await second.WaitReadyAsync();
            var readyAfter = clock.Elapsed;

            // Ready before the hung VM's reconnect timeout (8 s) ran out: it did not hold start-up back.
            var hung = await second.Http.GetDomainAsync("hung");
            Assert.True(readyAfter < TimeSpan.FromSeconds(8), $"ready only after {readyAfter}");
            Assert.Equal(("running", "reconnecting"), (hung.Str("state"), hung.Str("reason")));
            Assert.Equal(pids["hung"], hung.GetProperty("pid").GetInt32());

            var running = await VirtdHttp.PollAsync(() => second.Http.GetDomainAsync("running"), d => d.Str("reason") == "reconnected",
                "'running' to be reconnected");
            Assert.Equal("running", running.Str("state"));
            Assert.Equal(pids["running"], running.GetProperty("pid").GetInt32());
            var paused = await VirtdHttp.PollAsync(() => second.Http.GetDomainAsync("paused"), d => d.Str("reason") == "reconnected",
                "'paused' to be reconnected");
            Assert.Equal("paused", paused.Str("state"));

            // The taken-back VMs answer their monitor again.
            Assert.Equal("succeeded", (await second.Http.ActAsync("paused", "resume", wait: 30)).Str("state"));
            Assert.Equal("succeeded", (await second.Http.ActAsync("running", "suspend", wait: 30)).Str("state"));

            // And the hung one can be destroyed at any time, reconnecting or not.
            clock.Restart();
            var destroyed = await second.Http.ActAsync("hung", "destroy", new { timeout = 1 }, wait: 30);
            Assert.Equal("succeeded", destroyed.Str("state"));
            Assert.Equal("sigkill", destroyed.GetProperty("result").Str("stoppedBy"));
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2.5), $"destroy took {clock.Elapsed}");
            Assert.False(QemuHost.IsAlive(pids["hung"]));
            Assert.Equal("shut-off", await second.Http.StateOfAsync("hung"));
        }
        finally
        {
            await first.DisposeAsync();
            QemuHost.KillAll(run);
        }
    }

    [Fact]
    public async Task VmThatDiedWhileNoDaemonRan_IsShutOffWithReasonDaemonDown_AndItsFilesAreCleaned()
    {
        QemuHost.RequireQemu();
        var first = DaemonProcess.Start(QemuArgs);
        var run = first.RunDirectory;
        try
        {
            await first.WaitReadyAsync();
            var uuid = (await first.Http.DefineAsync(new { name = "gone", memoryMiB = 64 })).Str("uuid");
            Assert.Equal("succeeded", (await first.Http.ActAsync("gone", "start", wait: 60)).Str("state"));
            var pid = (await first.Http.GetDomainAsync("gone")).GetProperty("pid").GetInt32();
            await first.KillAsync();
            QemuHost.Signal(pid, "KILL");
            await QemuHost.WaitUntilAsync(() => !QemuHost.IsAlive(pid), "QEMU to die");
            Assert.True(File.Exists(Path.Combine(run, $"{uuid}.qmp")), "a SIGKILLed QEMU leaves its socket behind");

            await using var second = DaemonProcess.Start(QemuArgs, stateDirectory: first.StateDirectory, runDirectory: run);
            await second.WaitReadyAsync();

            var d = await second.Http.GetDomainAsync("gone");
            Assert.Equal(("shut-off", "daemon-down"), (d.Str("state"), d.Str("reason")));
            Assert.False(File.Exists(Path.Combine(run, $"{uuid}.qmp")));
            Assert.False(File.Exists(Path.Combine(run, $"{uuid}.status.json")));
            // And it starts again normally.
            Assert.Equal("succeeded", (await second.Http.ActAsync("gone", "start", wait: 60)).Str("state"));
        }
        finally
        {
            await first.DisposeAsync();
            QemuHost.KillAll(run);
        }
    }
    [Fact]
    public async Task ADestroyRunningWhenTheDaemonIsKilled_EndsInterruptedWithTheVmsRealState_AndTheVmCanBeActedOnAtOnce()
    {
        QemuHost.RequireQemu();
        var first = DaemonProcess.Start(QemuArgs);
        var run = first.RunDirectory;
        try
        {
            await first.WaitReadyAsync();
            await first.Http.DefineAsync(new { name = "victim", memoryMiB = 64 });
            Assert.Equal("succeeded", (await first.Http.ActAsync("victim", "start", wait: 60)).Str("state"));
            var pid = (await first.Http.GetDomainAsync("victim")).GetProperty("pid").GetInt32();
            // A stopped QEMU keeps the SIGTERM pending: the graceful destroy waits, running, when the daemon dies.
            QemuHost.Signal(pid, "STOP");
            var destroy = (await first.Http.ActAsync("victim", "destroy", new { graceful = true, timeout = 300 })).Id();
            await first.Http.RunningJobAsync(destroy);

            await first.KillAsync();
            QemuHost.Signal(pid, "CONT"); // the pending SIGTERM ends it while no daemon watches
            await QemuHost.WaitUntilAsync(() => !QemuHost.IsAlive(pid), $"QEMU {pid} to act on its pending SIGTERM");

            await using var second = DaemonProcess.Start(QemuArgs, stateDirectory: first.StateDirectory, runDirectory: run);
            await second.WaitReadyAsync();

            var job = await second.Http.GetJobAsync(destroy);
            var vm = await second.Http.GetDomainAsync("victim");
            Assert.Equal("shut-off", vm.Str("state"));
            Assert.Contains(job.Str("state"), new[] { "interrupted", "succeeded" });
            if (job.Str("state") == "interrupted")
            {
                Assert.Equal("interrupted", job.GetProperty("error").Str("code"));
                Assert.Equal("shut-off", job.GetProperty("result").Str("observedState"));
            }
            // Nothing of the killed daemon holds the domain: it starts at once.
            Assert.Equal("succeeded", (await second.Http.ActAsync("victim", "start", wait: 60)).Str("state"));
            Assert.Equal("succeeded", (await second.Http.ActAsync("victim", "destroy", wait: 30)).Str("state"));
        }
        finally
        {
            await first.DisposeAsync();
            QemuHost.KillAll(run);
        }
    }
}
