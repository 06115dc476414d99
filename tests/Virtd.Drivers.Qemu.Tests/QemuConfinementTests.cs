using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Virtd.Drivers.Qemu.Tests.Support;
using Virtd.Testing;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>Guests' QEMU runs unprivileged, and no image chain can lead it to a file outside the pools (issue "Confined QEMU").</summary>
public sealed class QemuConfinementTests
{
    [Fact]
    public async Task QemuOfAStartedVm_RunsAsVirtdQemu_WithNoNewPrivsSeccompAndNoCapabilities()
    {
        await using var q = new QemuApp();
        var disk = q.App.CreateImage("disk.img", 1024 * 1024);
        await q.Http.DefineAsync(new { name = "vm", memoryMiB = 64, disks = new[] { new { path = disk, format = "raw" } } });

        var pid = await q.StartAsync("vm");

        var status = File.ReadAllLines($"/proc/{pid}/status").Select(l => l.Split(':', 2)).ToDictionary(p => p[0], p => p[1].Trim());
        var uid = uint.Parse(status["Uid"].Split('\t')[0]);
        Assert.Equal("virtd-qemu", UserName(uid));
        Assert.Equal("1", status["NoNewPrivs"]);
        Assert.Equal("2", status["Seccomp"]);
        Assert.Equal("0000000000000000", status["CapEff"]);
        Assert.Equal("0000000000000000", status["CapPrm"]);
        Assert.Equal("0000000000000000", status["CapBnd"]);
        Assert.Equal("", status["Groups"]);
        // The disk reached it as a descriptor the daemon opened: QEMU itself could not open the file by its path.
        Assert.Contains(disk, QemuHost.OpenFiles(pid));
        var host = await q.Http.GetFromJsonAsync<JsonElement>("/api/v1/host");
        var confinement = host.GetProperty("hypervisors").EnumerateArray().Single(h => h.Str("driver") == "qemu").GetProperty("confinement");
        Assert.Equal("virtd-qemu", confinement.Str("user"));
        Assert.True(confinement.GetProperty("noNewPrivs").GetBoolean());
        Assert.True(confinement.GetProperty("sandbox").GetBoolean());
        Assert.NotNull(confinement.Str("cgroups"));
    }

    [Fact]
    public async Task Define_OfAQcow2WhoseBackingFileIsOutsideThePools_Is400_TheSameWhetherOrNotItExists()
    {
        await using var q = new QemuApp();
        var images = q.App.ImagesDirectory;
        Directory.CreateDirectory(images);
        var readable = Path.Combine(images, "to-hostname.qcow2");
        var missing = Path.Combine(images, "to-nothing.qcow2");
        QemuHost.QemuImg("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", readable, "1M");
        QemuHost.QemuImg("create", "-f", "qcow2", "-u", "-b", "/etc/no-such-file-here", "-F", "raw", missing, "1M");

        var first = await DefineAsync(q, "a", readable, "qcow2");
        var second = await DefineAsync(q, "b", missing, "qcow2");

        var problemA = await first.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        var problemB = await second.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(problemA.FieldErrors()["disks[0]"], problemB.FieldErrors()["disks[0]"]);
        Assert.DoesNotContain("/etc", problemA.GetRawText());
        Assert.Contains("outside every storage pool", problemA.FieldErrors()["disks[0]"][0]);
    }

    [Fact]
    public async Task AGuestThatWritesAQcow2HeaderIntoItsRawDisk_CannotMakeAPutOrAStartOpenAHostFile()
    {
        await using var q = new QemuApp();
        var images = q.App.ImagesDirectory;
        Directory.CreateDirectory(images);
        var disk = Path.Combine(images, "guest.img");
        QemuHost.QemuImg("create", "-f", "raw", disk, "1M");
        await q.Http.DefineAsync(new { name = "vm", memoryMiB = 64, disks = new[] { new { path = disk, format = "raw" } } });

        // What a guest can do to its own raw disk: write a qcow2 header naming a host file as its backing file.
        var header = Path.Combine(q.App.StateDirectory, "header.qcow2");
        QemuHost.QemuImg("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", header, "1M");
        using (var raw = File.OpenWrite(disk)) raw.Write(File.ReadAllBytes(header));

        // 1. Switching the disk to qcow2 is refused by the PUT.
        var put = await q.Http.PutAsJsonAsync("/api/v1/domains/vm", new { name = "vm", memoryMiB = 64, disks = new[] { new { path = disk, format = "qcow2" } } });
        await put.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");

        // 2. A definition that was already qcow2 when the header changed is refused by the start, before QEMU exists.
        var clean = Path.Combine(images, "clean.qcow2");
        QemuHost.QemuImg("create", "-f", "qcow2", clean, "1M");
        await q.Http.DefineAsync(new { name = "vm2", memoryMiB = 64, disks = new[] { new { path = clean, format = "qcow2" } } });
        File.Copy(header, clean, overwrite: true);
        var job = await q.Http.ActAsync("vm2", "start", wait: 30);

        Assert.Equal("failed", job.Str("state"));
        Assert.Equal("image-unsafe", job.GetProperty("error").Str("code"));
        Assert.DoesNotContain("/etc", job.GetRawText());
        Assert.Equal("shut-off", await q.Http.StateOfAsync("vm2"));
        Assert.Empty(QemuHost.FindAll(q.RunDirectory)); // no QEMU was started, so none opened the host file
    }

    [Fact]
    public async Task AQcow2CloneOfABaseInThePool_RunsWithItsWholeChainGivenExplicitly()
    {
        await using var q = new QemuApp();
        var images = q.App.ImagesDirectory;
        Directory.CreateDirectory(images);
        var baseImage = Path.Combine(images, "base.raw");
        var clone = Path.Combine(images, "clone.qcow2");
        QemuHost.QemuImg("create", "-f", "raw", baseImage, "1M");
        QemuHost.QemuImg("create", "-f", "qcow2", "-b", baseImage, "-F", "raw", clone, "1M");
        await q.Http.DefineAsync(new { name = "vm", memoryMiB = 64, disks = new[] { new { path = clone, format = "qcow2" } } });

        var pid = await q.StartAsync("vm");

        var open = QemuHost.OpenFiles(pid);
        Assert.Contains(clone, open);
        Assert.Contains(baseImage, open);
        var argv = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
        Assert.Contains(argv, a => a.Contains("\"backing\":\"disk0-format1\"", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AQemuImgThatHangs_IsStoppedAtQemuImageTimeout_WithAClearError()
    {
        var hang = Path.Combine(TestDirectories.Create("virtd-hang-"), "qemu-img");
        await File.WriteAllTextAsync(hang, "#!/bin/sh\nexec sleep 600\n");
        File.SetUnixFileMode(hang, (UnixFileMode)0b111_101_101);
        File.SetUnixFileMode(Path.GetDirectoryName(hang)!, (UnixFileMode)0b111_101_101);
        await using var q = new QemuApp(new Dictionary<string, string?> { ["Qemu:ImgBinary"] = hang, ["Qemu:ImageTimeout"] = "00:00:01" });
        var disk = q.App.CreateImage("disk.img", 1024 * 1024);

        var clock = Stopwatch.StartNew();
        var r = await DefineAsync(q, "vm", disk, "raw");

        var problem = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("Qemu:ImageTimeout", problem.FieldErrors()["disks[0]"][0]);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"the define took {clock.Elapsed}");
        Assert.DoesNotContain(Process.GetProcessesByName("sleep"), p => Cmdline(p.Id).Contains("600"));
    }

    private static Task<HttpResponseMessage> DefineAsync(QemuApp q, string name, string path, string format) =>
        q.Http.PostAsJsonAsync("/api/v1/domains", new { name, memoryMiB = 64, disks = new[] { new { path, format } } });

    private static string UserName(uint uid) =>
        File.ReadAllLines("/etc/passwd").Select(l => l.Split(':')).First(f => f[2] == uid.ToString(System.Globalization.CultureInfo.InvariantCulture))[0];

    private static string Cmdline(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '); }
        catch (IOException) { return ""; }
    }
}
