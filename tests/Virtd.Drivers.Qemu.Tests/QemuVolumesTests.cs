using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using Virtd.Drivers.Qemu.Tests.Support;
using Virtd.Testing;
using Xunit.Abstractions;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Volumes end to end with a real daemon process and the real test guest: what the guest sees is what the API made.</summary>
public sealed class QemuVolumesTests(ITestOutputHelper output)
{
    private const string Volumes = "/api/v1/pools/default/volumes";

    [Fact]
    public async Task Upload100MiB_Clone_Boot_SeeTheDisk_Resize_AndDeleteOnlyOnceUnused()
    {
        QemuHost.RequireQemu();
        var images = TestDirectories.Create("virtd-vol-");
        await using var daemon = DaemonProcess.Start(["--DefaultDriver", "qemu", "--Logging:LogLevel:Default", "Warning",
            "--Storage:Pools:default", images, "--Storage:Pools:guest", TestGuest.Directory]);
        await daemon.WaitReadyAsync();
        var http = daemon.Http;

        // Upload 100 MiB, streamed: the daemon's resident memory stays nearly flat.
        var source = Path.Combine(TestDirectories.Create("virtd-upload-"), "disk.img");
        await using (var f = File.Create(source))
        {
            var chunk = RandomNumberGenerator.GetBytes(1 << 20);
            for (var i = 0; i < 100; i++) await f.WriteAsync(chunk);
        }
        var before = Rss(daemon.Pid);
        var peak = before;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                peak = Math.Max(peak, Rss(daemon.Pid));
                try { await Task.Delay(20, sampling.Token); } catch (OperationCanceledException) { }
            }
        });
        var clock = Stopwatch.StartNew();
        HttpResponseMessage put;
        await using (var body = File.OpenRead(source))
            put = await http.PutAsync($"{Volumes}/base.img/content?format=raw", new StreamContent(body, 1 << 16));
        var took = clock.Elapsed;
        await sampling.CancelAsync();
        await sampler;
        Assert.Equal(HttpStatusCode.Created, put.StatusCode);
        Assert.Equal(100L << 20, (await put.ReadJsonAsync()).GetProperty("virtualSize").GetInt64());
        var growth = (peak - before) / 1024.0 / 1024.0;
        output.WriteLine($"upload of 100 MiB: {took.TotalMilliseconds:0} ms, daemon RSS {before / 1048576.0:0.0} MiB before, peak +{growth:0.0} MiB");
        Console.WriteLine($"volume upload: 100 MiB in {took.TotalMilliseconds:0} ms ({100 / took.TotalSeconds:0} MiB/s), daemon RSS grew {growth:0.0} MiB at most");
        Assert.True(growth < 20, $"the daemon's RSS grew {growth:0.0} MiB while streaming 100 MiB");
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(source)), SHA256.HashData(File.ReadAllBytes(Path.Combine(images, "base.img"))));

        // A copy-on-write clone, attached to the test guest: the guest sees a 100 MiB virtio disk.
        var clone = await http.PostJsonAsync(Volumes, new { name = "vm.qcow2", backingVolume = "default/base.img" });
        Assert.Equal(HttpStatusCode.Created, clone.StatusCode);
        Assert.Equal("default/base.img", (await clone.ReadJsonAsync()).Str("backingVolume"));
        await http.DefineAsync(TestGuest.Definition("vm", new { disks = new[] { new { volume = "default/vm.qcow2" } } }));
        Assert.Equal("succeeded", (await http.ActAsync("vm", "start", wait: 60)).Str("state"));
        var uuid = (await http.GetDomainAsync("vm")).GetProperty("uuid").GetGuid();
        var console = TestGuest.ConsoleLog(Path.Combine(daemon.StateDirectory, "log"), uuid);
        await QemuHost.WaitUntilAsync(() => TestGuest.Console(console).Contains(TestGuest.ReadyLine), "the guest to be ready", TimeSpan.FromSeconds(60));
        Assert.Contains("virtd-test-guest: disk vda 102400", TestGuest.Console(console));

        // While it runs: no resize, no delete of the clone nor of its base.
        await (await http.PostJsonAsync($"{Volumes}/vm.qcow2/resize", new { capacity = "200MiB" })).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");
        await (await http.DeleteAsync($"{Volumes}/vm.qcow2")).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");
        await (await http.DeleteAsync($"{Volumes}/base.img")).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");

        // Stopped, it grows; the next boot sees 200 MiB.
        Assert.Equal("succeeded", (await http.ActAsync("vm", "destroy", wait: 60)).Str("state"));
        var grown = await (await http.PostJsonAsync($"{Volumes}/vm.qcow2/resize", new { capacity = "200MiB" })).ReadJsonAsync();
        Assert.Equal(200L << 20, grown.GetProperty("virtualSize").GetInt64());
        Assert.Equal("succeeded", (await http.ActAsync("vm", "start", wait: 60)).Str("state"));
        await QemuHost.WaitUntilAsync(() => TestGuest.Console(console).Contains("virtd-test-guest: disk vda 204800"), "the guest to see 200 MiB", TimeSpan.FromSeconds(60));
        Assert.Equal("succeeded", (await http.ActAsync("vm", "destroy", wait: 60)).Str("state"));

        // Defined, still in use; undefined, it goes (the clone, then its base).
        await (await http.DeleteAsync($"{Volumes}/vm.qcow2")).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/vm")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"{Volumes}/vm.qcow2")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"{Volumes}/base.img")).StatusCode);
        Assert.Empty(Directory.GetFileSystemEntries(images));
    }

    [Fact]
    public async Task Upload_OfAQcow2WhoseBackingFileIsOutsideThePools_Is400_AndNothingIsKept()
    {
        await using var q = new QemuApp();
        var dir = TestDirectories.Create("virtd-evil-");
        var evil = Path.Combine(dir, "evil.qcow2");
        QemuHost.QemuImg("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", evil, "1M");

        var r = await q.Http.PutAsync($"{Volumes}/evil.img/content", new ByteArrayContent(File.ReadAllBytes(evil)));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("outside every storage pool", p.FieldErrors()["content"][0]);
        Assert.DoesNotContain("/etc/hostname", p.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(q.App.ImagesDirectory));
    }

    private static long Rss(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return 0;
    }
}
