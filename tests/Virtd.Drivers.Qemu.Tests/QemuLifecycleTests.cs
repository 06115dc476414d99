using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using Virtd.Testing;
using Virtd.Core.Events;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Real QEMU processes driven through the REST API.</summary>
[Collection(QemuCollection.Name)]
public class QemuLifecycleTests
{
    [Fact]
    public async Task Start_RunsARealQemuInItsOwnSession_CarryingTheUuid_AndDestroyEndsIt()
    {
        await using var q = new QemuApp();
        var uuid = (await q.DefineDisklessAsync("vm1")).Str("uuid")!;

        var pid = await q.StartAsync("vm1");

        Assert.True(QemuHost.IsAlive(pid));
        Assert.Contains(uuid, QemuHost.Cmdline(pid));
        Assert.Equal(pid, QemuHost.SessionId(pid)); // its own session: Ctrl-C and the daemon's exit do not reach it
        Assert.True(File.Exists(Path.Combine(q.RunDirectory, $"{uuid}.status.json")));

        var job = await q.Http.ActAsync("vm1", "destroy", wait: 30);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("sigterm", job.GetProperty("result").Str("stoppedBy"));
        var d = await q.Http.GetDomainAsync("vm1");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("destroyed", d.Str("reason"));
        Assert.False(QemuHost.IsAlive(pid));
        Assert.False(File.Exists(Path.Combine(q.RunDirectory, $"{uuid}.status.json")));
        Assert.False(File.Exists(Path.Combine(q.RunDirectory, $"{uuid}.qmp")));
    }

    [Fact]
    public async Task SuspendAndResume_ChangeStateAndPublishEachChangeOnce()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("vm1");
        await q.StartAsync("vm1");
        using var events = q.Subscribe("vm1");

        Assert.Equal("succeeded", (await q.Http.ActAsync("vm1", "suspend", wait: 30)).Str("state"));
        var paused = await q.Http.GetDomainAsync("vm1");
        Assert.Equal(("paused", "user"), (paused.Str("state"), paused.Str("reason")));
        Assert.Equal("succeeded", (await q.Http.ActAsync("vm1", "resume", wait: 30)).Str("state"));
        Assert.Equal("running", await q.Http.StateOfAsync("vm1"));
        Assert.Equal("succeeded", (await q.Http.ActAsync("vm1", "destroy", wait: 30)).Str("state"));

        var seen = new List<string>();
        while (seen.LastOrDefault() != "destroyed")
        {
            var e = await events.Reader.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            if (e.Type == EventTypes.DomainLifecycle) seen.Add(((DomainEventData)e.Data).Event!);
        }
        // QEMU's own STOP/RESUME events and the jobs agree: one event per change, in order.
        Assert.Equal(["suspended", "resumed", "destroyed"], seen);
    }

    [Fact]
    public async Task Reset_KeepsTheSameProcessRunning()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("vm1");
        var pid = await q.StartAsync("vm1");

        var job = await q.Http.ActAsync("vm1", "reset", wait: 30);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await q.Http.GetDomainAsync("vm1");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
    }

    [Fact]
    public async Task Shutdown_OfAGuestThatIgnoresAcpi_TimesOutAndStaysRunning_AndForceStopsItBySigterm()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("vm1"); // no OS: nothing acts on the power button
        var pid = await q.StartAsync("vm1");

        var timedOut = await q.Http.ActAsync("vm1", "shutdown", new { timeout = 2 }, wait: 30);

        Assert.Equal("failed", timedOut.Str("state"));
        Assert.Equal("shutdown-timeout", timedOut.GetProperty("error").Str("code"));
        Assert.Equal("running", await q.Http.StateOfAsync("vm1"));
        Assert.True(QemuHost.IsAlive(pid));

        var forced = await q.Http.ActAsync("vm1", "shutdown", new { timeout = 1, force = true }, wait: 30);

        Assert.Equal("succeeded", forced.Str("state"));
        Assert.Equal("sigterm", forced.GetProperty("result").Str("stoppedBy"));
        Assert.Equal("shut-off", await q.Http.StateOfAsync("vm1"));
        Assert.False(QemuHost.IsAlive(pid));
    }

    [Fact]
    public async Task ExternalKill9_IsSeenAtOnceAsACrash_AndOnCrashRestartStartsItAgain()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("plain");
        await q.DefineDisklessAsync("phoenix", new { onCrash = "restart" });
        var plainPid = await q.StartAsync("plain");
        var phoenixPid = await q.StartAsync("phoenix");

        QemuHost.Signal(plainPid, "KILL");
        QemuHost.Signal(phoenixPid, "KILL");

        var crashed = await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("plain"), d => d.Str("state") == "crashed", "plain to be crashed",
            TimeSpan.FromSeconds(5));
        Assert.Contains("SIGKILL", crashed.Str("reason"));
        var restarted = await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("phoenix"),
            d => d.Str("state") == "running" && d.GetProperty("pid").GetInt32() != phoenixPid, "phoenix to run again", TimeSpan.FromSeconds(30));
        Assert.True(QemuHost.IsAlive(restarted.GetProperty("pid").GetInt32()));
    }

    [Fact]
    public async Task Start_ThatQemuRefuses_FailsWithQemusOwnError_AndLeavesNothingBehind()
    {
        await using var q = new QemuApp();
        // Zeros: no Linux boot header, and QEMU refuses to give an initrd to what it takes for an ancient kernel.
        var kernel = q.App.CreateImage("not-a-kernel", 1024 * 1024);
        var initrd = q.App.CreateImage("initrd", 4096);
        var uuid = (await q.Http.DefineAsync(new { name = "bad", memoryMiB = 64, boot = new { kernel, initrd } })).Str("uuid");

        var job = await q.Http.ActAsync("bad", "start", wait: 30);

        Assert.Equal("failed", job.Str("state"));
        var error = job.GetProperty("error");
        Assert.Equal("hypervisor-error", error.Str("code"));
        Assert.Contains("kernel", error.Str("detail"));
        Assert.Equal("shut-off", await q.Http.StateOfAsync("bad"));
        Assert.Empty(QemuHost.FindAll(q.RunDirectory));
        Assert.False(File.Exists(Path.Combine(q.RunDirectory, $"{uuid}.status.json")));
    }

    [Fact]
    public async Task Define_OfADiskThatIsNotItsFormat_Is400NamingTheDisk()
    {
        await using var q = new QemuApp();
        var image = q.App.CreateImage("not-really.qcow2", 1024 * 1024); // zeros: not a qcow2 image

        var r = await q.Http.PostAsJsonAsync("/api/v1/domains", new { name = "bad", memoryMiB = 64, disks = new[] { new { path = image, format = "qcow2" } } });

        var problem = await r.AssertProblemAsync(System.Net.HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("not a valid qcow2 image", problem.FieldErrors()["disks[0]"][0]);
    }

    [Fact]
    public async Task Start_WithCommasEqualsAndSpacesInAPath_OpensExactlyThatFile()
    {
        await using var q = new QemuApp();
        var image = q.App.CreateImage("a,format=qcow2,b=c d.img", 1024 * 1024);
        await q.Http.DefineAsync(new { name = "tricky", memoryMiB = 64, disks = new[] { new { path = image, format = "raw", readOnly = true } } });

        var pid = await q.StartAsync("tricky");

        Assert.Contains(image, QemuHost.OpenFiles(pid));
    }

    [Fact]
    public async Task Host_ShowsQemusVersionAcceleratorAndMachines()
    {
        await using var q = new QemuApp();

        var host = await (await q.Http.GetAsync("/api/v1/host")).Content.ReadAsStringAsync();
        var qemu = VirtdHttp.Parse(host).GetProperty("hypervisors").EnumerateArray().Single(h => h.Str("driver") == "qemu");

        Assert.True(qemu.GetProperty("available").GetBoolean(), host);
        Assert.Matches(@"^\d+\.\d+\.\d+$", qemu.Str("version"));
        Assert.Equal("tcg", qemu.Str("accelerator")); // these machines have no usable KVM
        Assert.Contains("q35", qemu.GetProperty("machines").EnumerateArray().Select(m => m.GetString()));
        Assert.Equal("qemu", VirtdHttp.Parse(host).Str("defaultDriver"));
    }

    [Fact]
    public async Task QemusCapabilities_AreKeptWithTheBinarysIdentity_AndTheNextDaemonReadsThemInsteadOfStartingQemu()
    {
        static async Task<string?> VersionAsync(QemuApp q) =>
            VirtdHttp.Parse(await (await q.Http.GetAsync("/api/v1/host")).Content.ReadAsStringAsync())
                .GetProperty("hypervisors").EnumerateArray().Single(h => h.Str("driver") == "qemu").Str("version");
        string state, version;
        await using (var first = new QemuApp())
        {
            state = first.App.StateDirectory;
            version = (await VersionAsync(first))!;
        }
        var cache = Path.Combine(state, "cache", "qemu-capabilities.json");
        var kept = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cache))!;
        Assert.Equal(version, (string?)kept["capabilities"]!["version"]);

        // While the binary is the same file, the next daemon takes the kept answer (here made recognisable) without asking QEMU.
        kept["capabilities"]!["version"] = "99.0.0";
        File.WriteAllText(cache, kept.ToJsonString());
        await using (var second = new QemuApp(stateDirectory: state))
            Assert.Equal("99.0.0", await VersionAsync(second));

        // A binary with another identity (an upgrade replaces the file) is asked again, and the cache is rewritten.
        kept["identity"]!["inode"] = (ulong)kept["identity"]!["inode"]! + 1;
        File.WriteAllText(cache, kept.ToJsonString());
        await using (var third = new QemuApp(stateDirectory: state))
            Assert.Equal(version, await VersionAsync(third));
        Assert.Equal(version, (string?)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cache))!["capabilities"]!["version"]);
    }

    [Fact]
    public async Task HungVm_GracefulDestroyFails_SuspendTimesOut_DefaultDestroyKills_WhileOthersStayResponsive()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("hung");
        await q.DefineDisklessAsync("fine");
        var pid = await q.StartAsync("hung");
        await q.StartAsync("fine");
        QemuHost.Signal(pid, "STOP"); // a wedged QEMU: ignores SIGTERM and its monitor until SIGCONT

        // A suspend of the hung VM is in flight while the other VM and the list keep answering.
        var clock = Stopwatch.StartNew();
        var suspend = q.Http.ActAsync("hung", "suspend", wait: 30);
        var slowest = TimeSpan.Zero;
        for (var i = 0; i < 5; i++)
        {
            foreach (var call in new Func<Task>[]
                     {
                         async () => Assert.Equal("succeeded", (await q.Http.ActAsync("fine", "suspend", wait: 10)).Str("state")),
                         async () => Assert.Equal("succeeded", (await q.Http.ActAsync("fine", "resume", wait: 10)).Str("state")),
                         async () => Assert.Equal(HttpStatusCode.OK, (await q.Http.GetAsync("/api/v1/domains")).StatusCode),
                     })
            {
                var sw = Stopwatch.StartNew();
                await call();
                if (sw.Elapsed > slowest) slowest = sw.Elapsed;
            }
        }
        var suspended = await suspend;
        var suspendTook = clock.Elapsed;

        Assert.Equal("monitor-timeout", suspended.GetProperty("error").Str("code"));
        Assert.True(suspendTook < QemuApp.MonitorTimeout + TimeSpan.FromSeconds(1), $"suspend failed after {suspendTook}");
        Assert.True(slowest < TimeSpan.FromMilliseconds(100), $"the other VM or the list took {slowest.TotalMilliseconds:0} ms");

        var graceful = await q.Http.ActAsync("hung", "destroy", new { graceful = true, timeout = 2 }, wait: 30);

        Assert.Equal("destroy-timeout", graceful.GetProperty("error").Str("code"));
        Assert.Equal('T', QemuHost.State(pid)); // still there, exactly as it was
        Assert.Equal("running", await q.Http.StateOfAsync("hung"));

        clock.Restart();
        var destroyed = await q.Http.ActAsync("hung", "destroy", new { timeout = 2 }, wait: 30);

        Assert.Equal("succeeded", destroyed.Str("state"));
        Assert.Equal("sigkill", destroyed.GetProperty("result").Str("stoppedBy"));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"destroy took {clock.Elapsed}");
        Assert.False(QemuHost.IsAlive(pid));
        Assert.Equal("shut-off", await q.Http.StateOfAsync("hung"));
        Assert.Equal("running", await q.Http.StateOfAsync("fine"));
    }

    [Fact]
    public async Task ManyStartsAndDestroys_LeaveNoFileDescriptorsBehind()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("vm1");
        await q.StartAsync("vm1");
        await q.Http.ActAsync("vm1", "destroy", wait: 30);
        var before = Directory.GetFiles("/proc/self/fd").Length;

        for (var i = 0; i < 10; i++)
        {
            await q.StartAsync("vm1");
            Assert.Equal("succeeded", (await q.Http.ActAsync("vm1", "destroy", wait: 30)).Str("state"));
        }

        // Each run's pidfd, monitor socket and log handles are closed when it ends (not when a GC finds them).
        var after = Directory.GetFiles("/proc/self/fd").Length;
        Assert.True(after - before < 5, $"{after - before} more descriptors open after 10 runs");
    }
    [Fact]
    public async Task LogFiles_AreNamedByUuid_SoDomainXConsoleCannotWriteIntoTheConsoleLogOfX()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("x");
        await q.DefineDisklessAsync("x.console");
        await q.StartAsync("x");
        await q.StartAsync("x.console");

        var x = (await q.Http.GetDomainAsync("x")).GetProperty("uuid").GetGuid();
        var other = (await q.Http.GetDomainAsync("x.console")).GetProperty("uuid").GetGuid();

        Assert.Contains("--- start of x ---", File.ReadAllText(TestGuest.ConsoleLog(q.LogDirectory, x)));
        Assert.DoesNotContain("x.console", File.ReadAllText(TestGuest.ConsoleLog(q.LogDirectory, x)));
        Assert.Contains("--- start of x.console ---", File.ReadAllText(TestGuest.ConsoleLog(q.LogDirectory, other)));
        Assert.True(File.Exists(Path.Combine(q.LogDirectory, $"{other:D}.log")));
        Assert.Empty(Directory.EnumerateFiles(q.LogDirectory, "x*"));
    }
    [Fact]
    public async Task AGracefulDestroysSigterm_TakingEffectAfterTheJobGaveUp_IsADestroyNeverACrash_AndOnCrashDoesNotRestart()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("late", new { onCrash = "restart" });
        var pid = await q.StartAsync("late");
        using var events = q.Subscribe("late");
        QemuHost.Signal(pid, "STOP"); // the SIGTERM stays pending while the process is stopped

        var graceful = await q.Http.ActAsync("late", "destroy", new { graceful = true, timeout = 1 }, wait: 30);
        Assert.Equal("destroy-timeout", graceful.GetProperty("error").Str("code"));
        Assert.Equal("running", await q.Http.StateOfAsync("late"));
        QemuHost.Signal(pid, "CONT"); // now it dies of that SIGTERM

        var d = await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("late"), d => d.Str("state") != "running", "the late SIGTERM to end it");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.StartsWith($"destroyed: the SIGTERM of job {graceful.Id()}", d.Str("reason"));
        Assert.Contains("stopped by sigterm", d.Str("reason"));
        var ev = await NextLifecycleAsync(events, "destroyed");
        Assert.Equal(graceful.Id(), ev.GetProperty("jobId").GetString());
        // onCrash: restart did not apply: no start job was queued and the domain stays off.
        var jobs = await (await q.Http.GetAsync("/api/v1/jobs?domain=late")).ReadJsonAsync();
        Assert.Equal(1, jobs.GetProperty("items").EnumerateArray().Count(j => j.Str("kind") == "start"));
        Assert.Equal("shut-off", await q.Http.StateOfAsync("late"));
    }

    [Fact]
    public async Task ASuspendThatTimedOut_SaysItMayStillTakeEffect_AndWhenItDoesTheEventNamesIt()
    {
        await using var q = new QemuApp();
        await q.DefineDisklessAsync("slowpoke");
        var pid = await q.StartAsync("slowpoke");
        using var events = q.Subscribe("slowpoke");
        QemuHost.Signal(pid, "STOP"); // the monitor stops answering; the stop command waits in its socket

        var suspend = await q.Http.ActAsync("slowpoke", "suspend", wait: 30);
        Assert.Equal("monitor-timeout", suspend.GetProperty("error").Str("code"));
        Assert.Contains("may still take effect", suspend.GetProperty("error").Str("detail"));
        QemuHost.Signal(pid, "CONT");

        var ev = await NextLifecycleAsync(events, "suspended");
        Assert.Equal(suspend.Id(), ev.GetProperty("jobId").GetString());
        Assert.Equal("paused", ev.Str("state"));
        Assert.Equal("paused", await q.Http.StateOfAsync("slowpoke"));
    }

    /// <summary>The next domain.lifecycle event of <paramref name="name"/>, as JSON (the API's shape).</summary>
    private static async Task<System.Text.Json.JsonElement> NextLifecycleAsync(Virtd.Core.Events.EventBus.Subscription events, string name)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var remaining = deadline - DateTime.UtcNow;
            if (remaining <= TimeSpan.Zero) Assert.Fail($"no '{name}' event within 30 s");
            var e = await events.Reader.ReadAsync().AsTask().WaitAsync(remaining);
            var json = System.Text.Json.JsonSerializer.SerializeToElement(e.Data, VirtdApplication.Json);
            if (e.Type == "domain.lifecycle" && json.Str("event") == name) return json;
        }
    }
}
