using Virtd.Testing;
using Virtd.Core.Events;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>A real Linux guest (scripts/build-test-guest) that obeys the ACPI power button.</summary>
[Collection(QemuCollection.Name)]
public class QemuGuestTests
{
    [Fact]
    public async Task AcpiShutdown_OfARealGuest_CompletesWithStoppedByAcpi()
    {
        await using var q = new QemuApp(testGuest: true);
        var pid = await StartReadyGuestAsync(q);

        var job = await q.Http.ActAsync("guest", "shutdown", new { timeout = 30 }, wait: 60);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("acpi", job.GetProperty("result").Str("stoppedBy"));
        var d = await q.Http.GetDomainAsync("guest");
        Assert.Equal(("shut-off", "shutdown"), (d.Str("state"), d.Str("reason")));
        Assert.False(QemuHost.IsAlive(pid));
    }

    [Fact]
    public async Task Reboot_OfARealGuest_BringsItBackInTheSameProcess()
    {
        await using var q = new QemuApp(testGuest: true);
        var pid = await StartReadyGuestAsync(q);

        var job = await q.Http.ActAsync("guest", "reboot", wait: 60);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await q.Http.GetDomainAsync("guest");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
        await TestGuest.WaitReadyAsync(q, "guest", times: 2); // it booted a second time
    }

    [Fact]
    public async Task Reboot_WithOnRebootDestroy_LeavesItShutOff()
    {
        await using var q = new QemuApp(testGuest: true);
        var pid = await StartReadyGuestAsync(q, new { onReboot = "destroy" });

        var job = await q.Http.ActAsync("guest", "reboot", wait: 60);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await q.Http.GetDomainAsync("guest");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.False(QemuHost.IsAlive(pid));
    }

    /// <summary>Defines and starts the test guest and waits until it has booted (acpid listens); returns its QEMU pid.</summary>
    private static async Task<int> StartReadyGuestAsync(QemuApp q, object? extra = null)
    {
        await q.Http.DefineAsync(TestGuest.Definition("guest", extra));
        var pid = await q.StartAsync("guest");
        await TestGuest.WaitReadyAsync(q, "guest");
        return pid;
    }

    private static object ActingOnItsOwn(string action, object? extra = null) =>
        QemuApp.Merge(new Dictionary<string, object?> { ["boot"] = new { kernel = TestGuest.Kernel, initrd = TestGuest.Initrd, cmdline = $"console=ttyS0 quiet panic=-1 virtd.test={action}" } }, extra);

    [Fact]
    public async Task GuestPoweringItselfOff_IsShutOffAtOnce_WithReasonGuestShutdown()
    {
        await using var q = new QemuApp(testGuest: true);
        await q.Http.DefineAsync(TestGuest.Definition("guest", ActingOnItsOwn("poweroff")));
        var pid = await q.StartAsync("guest");

        var d = await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("guest"), d => d.Str("state") != "running", "the guest to power off",
            TimeSpan.FromSeconds(60));

        Assert.Equal(("shut-off", "guest-shutdown"), (d.Str("state"), d.Str("reason")));
        Assert.False(QemuHost.IsAlive(pid));
    }

    [Fact]
    public async Task GuestPoweringItselfOff_WithOnPoweroffRestart_IsStartedAgain()
    {
        await using var q = new QemuApp(testGuest: true);
        await q.Http.DefineAsync(TestGuest.Definition("guest", ActingOnItsOwn("poweroff", new { onPoweroff = "restart" })));
        var pid = await q.StartAsync("guest");

        await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("guest"),
            d => d.Str("state") == "running" && d.GetProperty("pid").GetInt32() != pid, "the guest to run again in a new QEMU", TimeSpan.FromSeconds(60));

        Assert.False(QemuHost.IsAlive(pid));
        await q.Http.ActAsync("guest", "destroy", wait: 30);
    }

    [Fact]
    public async Task GuestRebootingItself_KeepsRunningInTheSameProcess_AndPublishesRebooted()
    {
        await using var q = new QemuApp(testGuest: true);
        await q.Http.DefineAsync(TestGuest.Definition("guest", ActingOnItsOwn("reboot")));
        using var events = q.Subscribe("guest");
        var pid = await q.StartAsync("guest");

        await TestGuest.WaitReadyAsync(q, "guest", times: 2);

        var rebooted = 0;
        while (events.Reader.TryRead(out var e))
        {
            if (e.Type == EventTypes.DomainLifecycle && ((DomainEventData)e.Data).Event == "rebooted") rebooted++;
        }
        Assert.True(rebooted >= 1, "no 'rebooted' event");
        var d = await q.Http.GetDomainAsync("guest");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
    }

    [Fact]
    public async Task GuestRebootingItself_WithOnRebootDestroy_IsShutOff()
    {
        await using var q = new QemuApp(testGuest: true);
        await q.Http.DefineAsync(TestGuest.Definition("guest", ActingOnItsOwn("reboot", new { onReboot = "destroy" })));
        var pid = await q.StartAsync("guest");

        var d = await VirtdHttp.PollAsync(() => q.Http.GetDomainAsync("guest"), d => d.Str("state") != "running", "the guest to end",
            TimeSpan.FromSeconds(60));

        Assert.Equal(("shut-off", "rebooted"), (d.Str("state"), d.Str("reason")));
        Assert.False(QemuHost.IsAlive(pid));
        Assert.Equal(1, File.ReadAllText(TestGuest.ConsoleLog(q.LogDirectory, d.GetProperty("uuid").GetGuid())).Split('\n').Count(l => l.Contains(TestGuest.ReadyLine)));
    }
}
