using Virtd.Testing;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Guests are hostile: what a real guest can reach of the daemon.</summary>
[Collection(QemuCollection.Name)]
public class QemuAccessTests
{
    [Fact]
    public async Task AGuestOnAUserNic_ReachesTheDaemonThroughItsGateway_AndGets401()
    {
        // QEMU's user network forwards the guest's 10.0.2.2 to the host's 127.0.0.1, where the daemon listens.
        await using var q = new QemuApp(testGuest: true, kestrel: true);
        var url = $"http://10.0.2.2:{q.Address!.Port}/api/v1/domains";
        await q.Http.DefineAsync(TestGuest.Definition("guest", new
        {
            nics = new[] { new { mode = "user" } },
            boot = new { kernel = TestGuest.Kernel, initrd = TestGuest.Initrd, cmdline = $"console=ttyS0 quiet panic=-1 virtd.fetch={url}" },
        }));
        await q.StartAsync("guest");

        var console = await TestGuest.WaitForLineAsync(q, "guest", "virtd-test-guest: fetch done");

        Assert.True(console.Contains("virtd-test-guest: fetch: HTTP/1.1 401 Unauthorized", StringComparison.Ordinal), console);
        Assert.True(console.Contains($"virtd-test-guest: fetching {url}", StringComparison.Ordinal), console);
        // Not the line's prefix: the serial console log has been seen to double a byte of it ("virtd-tesst-guest: fetch:
        // WWW-Authenticate: Bearer realm=..."), and the header is what this checks.
        Assert.True(console.Contains(": WWW-Authenticate: Bearer", StringComparison.Ordinal), console);
        Assert.True(console.Contains("\"code\":\"unauthenticated\"", StringComparison.Ordinal), console);
        Assert.DoesNotContain("\"items\"", console); // the list of domains never reached it
    }
}
