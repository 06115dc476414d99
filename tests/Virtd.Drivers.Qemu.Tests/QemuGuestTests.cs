using Virtd.Api.Tests.Support;
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
        await q.Http.DefineAsync(TestGuest.Definition("guest"));
        var pid = await q.StartAsync("guest");
        await TestGuest.WaitReadyAsync(q, "guest");

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
        await q.Http.DefineAsync(TestGuest.Definition("guest"));
        var pid = await q.StartAsync("guest");
        await TestGuest.WaitReadyAsync(q, "guest");

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
        await q.Http.DefineAsync(TestGuest.Definition("guest", new { onReboot = "destroy" }));
        var pid = await q.StartAsync("guest");
        await TestGuest.WaitReadyAsync(q, "guest");

        var job = await q.Http.ActAsync("guest", "reboot", wait: 60);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await q.Http.GetDomainAsync("guest");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.False(QemuHost.IsAlive(pid));
    }
}
