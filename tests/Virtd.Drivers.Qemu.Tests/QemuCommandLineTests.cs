using Virtd.Core.Domains;

namespace Virtd.Drivers.Qemu.Tests;

public class QemuCommandLineTests
{
    private static readonly Guid Uuid = Guid.Parse("0b6e2c52-6a2f-4d7e-9d6f-3f2b8d1c9a10");
    private static readonly QemuPaths Paths = QemuPaths.For("/run/virtd", "/var/lib/virtd/log", Uuid);

    private static DomainDefinition Def(Func<DomainDefinition, DomainDefinition>? change = null)
    {
        var d = new DomainDefinition { Name = "vm1", Uuid = Uuid, Driver = DriverKind.Qemu, MemoryMiB = 128, Vcpus = 2 };
        return change is null ? d : change(d);
    }

    private static IReadOnlyList<string> Build(DomainDefinition d, string accel = "tcg", bool sandbox = true) =>
        QemuCommandLine.Build("/usr/bin/qemu-system-x86_64", d, Paths, accel, sandbox);

    /// <summary>The value that follows <paramref name="option"/> each time it appears.</summary>
    private static List<string> ValuesOf(IReadOnlyList<string> argv, string option) =>
        argv.Select((a, i) => (a, i)).Where(x => x.a == option && x.i + 1 < argv.Count).Select(x => argv[x.i + 1]).ToList();

    [Fact]
    public void Build_DisklessVm_HasIdentityResourcesMonitorConsoleAndStartsPaused()
    {
        var argv = Build(Def());

        Assert.Equal("/usr/bin/qemu-system-x86_64", argv[0]);
        Assert.Equal(["guest=vm1,debug-threads=on"], ValuesOf(argv, "-name"));
        Assert.Equal([Uuid.ToString("D")], ValuesOf(argv, "-uuid"));
        Assert.Equal(["q35,accel=tcg"], ValuesOf(argv, "-machine"));
        Assert.Equal(["128"], ValuesOf(argv, "-m"));
        Assert.Equal(["2"], ValuesOf(argv, "-smp"));
        Assert.Contains("-nodefaults", argv);
        Assert.Contains("-no-user-config", argv);
        Assert.Equal(["none"], ValuesOf(argv, "-display"));
        Assert.Equal(["socket,id=monitor,path=/run/virtd/" + Uuid + ".qmp,server=on,wait=off", "file,id=console,path=/var/lib/virtd/log/" + Uuid + ".console.log,append=on"],
            ValuesOf(argv, "-chardev"));
        Assert.Equal(["chardev=monitor,mode=control"], ValuesOf(argv, "-mon"));
        Assert.Equal(["chardev:console"], ValuesOf(argv, "-serial"));
        Assert.Equal([QemuCommandLine.SandboxOptions], ValuesOf(argv, "-sandbox"));
        Assert.Equal("-S", argv[^1]);
        Assert.Empty(ValuesOf(argv, "-drive"));
        Assert.Empty(ValuesOf(argv, "-netdev"));
        Assert.DoesNotContain("-daemonize", argv);
    }

    [Fact]
    public void Build_PcMachineKvmAndNoSandbox()
    {
        var argv = Build(Def(d => d with { Machine = MachineType.Pc }), accel: "kvm", sandbox: false);

        Assert.Equal(["pc,accel=kvm"], ValuesOf(argv, "-machine"));
        Assert.Equal(["host"], ValuesOf(argv, "-cpu"));
        Assert.Empty(ValuesOf(argv, "-sandbox"));
    }

    [Fact]
    public void Build_DisksAndNics_InOrderWithFormatBusAndReadOnly()
    {
        var argv = Build(Def(d => d with
        {
            Disks = [new DiskConfig { Path = "/img/a.qcow2", Format = DiskFormat.Qcow2 }, new DiskConfig { Path = "/img/b.iso", Bus = DiskBus.Sata, ReadOnly = true }],
            Nics = [new NicConfig { Mode = NicMode.User }, new NicConfig { Mode = NicMode.None }],
        }));

        Assert.Equal(["file=/img/a.qcow2,format=qcow2,if=virtio,index=0,media=disk", "file=/img/b.iso,format=raw,if=ide,index=1,media=disk,readonly=on"],
            ValuesOf(argv, "-drive"));
        Assert.Equal(["user,id=net0"], ValuesOf(argv, "-netdev"));
        Assert.Equal(["virtio-net-pci,netdev=net0,romfile="], ValuesOf(argv, "-device"));
    }

    [Fact]
    public void Build_KernelBoot_PassesKernelInitrdAndCmdlineAsWholeArguments()
    {
        var argv = Build(Def(d => d with { Boot = new BootConfig { Kernel = "/img/k,1", Initrd = "/img/i=2", Cmdline = "console=ttyS0 quiet, panic=-1" } }));

        Assert.Equal(["/img/k,1"], ValuesOf(argv, "-kernel"));
        Assert.Equal(["/img/i=2"], ValuesOf(argv, "-initrd"));
        Assert.Equal(["console=ttyS0 quiet, panic=-1"], ValuesOf(argv, "-append"));
    }

    [Theory]
    [InlineData("/pool/a,format=qcow2,file.driver=ssh.img", "file=/pool/a,,format=qcow2,,file.driver=ssh.img,format=raw,if=virtio,index=0,media=disk")]
    [InlineData("/pool/with space/x=y.img", "file=/pool/with space/x=y.img,format=raw,if=virtio,index=0,media=disk")]
    [InlineData("/pool/,,,/end,", "file=/pool/,,,,,,/end,,,format=raw,if=virtio,index=0,media=disk")]
    public void Build_CommasInAPath_AreDoubledSoTheyCannotAddOptions(string path, string expected)
    {
        var argv = Build(Def(d => d with { Disks = [new DiskConfig { Path = path }] }));

        var drive = Assert.Single(ValuesOf(argv, "-drive"));
        Assert.Equal(expected, drive);
        // Split the way QEMU does (",," is a literal comma): the first option is the whole path, nothing else is added.
        var options = SplitQemuOptions(drive);
        Assert.Equal(("file", path), options[0]);
        Assert.Equal(["file", "format", "if", "index", "media"], options.Select(o => o.Key).ToArray());
    }

    [Fact]
    public void Build_CommasInRunAndLogPaths_AreDoubled()
    {
        var paths = QemuPaths.For("/run/a,server=off", "/log/b,c", Uuid);
        var argv = QemuCommandLine.Build("/usr/bin/qemu-system-x86_64", Def(), paths, "tcg", sandbox: false);

        var chardevs = ValuesOf(argv, "-chardev").Select(SplitQemuOptions).ToList();
        Assert.Equal($"/run/a,server=off/{Uuid}.qmp", chardevs[0].Single(o => o.Key == "path").Value);
        Assert.Equal("on", chardevs[0].Single(o => o.Key == "server").Value);
        Assert.Equal($"/log/b,c/{Uuid}.console.log", chardevs[1].Single(o => o.Key == "path").Value);
    }

    [Fact]
    public void Build_NeverAddsAnArgumentForSpacesInValues()
    {
        var argv = Build(Def(d => d with { Boot = new BootConfig { Kernel = "/img/my kernel", Cmdline = "a b  c" } }));

        Assert.Equal(["/img/my kernel"], ValuesOf(argv, "-kernel"));
        Assert.Equal(["a b  c"], ValuesOf(argv, "-append"));
    }

    /// <summary>QEMU's option-string parsing: ',' separates, ',,' is a literal comma, the first '=' splits key and value.</summary>
    private static List<(string Key, string Value)> SplitQemuOptions(string s)
    {
        var parts = new List<string>();
        var current = new System.Text.StringBuilder();
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == ',' && i + 1 < s.Length && s[i + 1] == ',') { current.Append(','); i++; }
            else if (s[i] == ',') { parts.Add(current.ToString()); current.Clear(); }
            else current.Append(s[i]);
        }
        parts.Add(current.ToString());
        return parts.Select(p => p.IndexOf('=') is var eq and >= 0 ? (p[..eq], p[(eq + 1)..]) : (p, "")).ToList();
    }
}
