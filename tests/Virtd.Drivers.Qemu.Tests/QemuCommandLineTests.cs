using Virtd.Core.Domains;

namespace Virtd.Drivers.Qemu.Tests;

public class QemuCommandLineTests
{
    private static readonly Guid Uuid = Guid.Parse("0b6e2c52-6a2f-4d7e-9d6f-3f2b8d1c9a10");
    private static readonly QemuFiles Files = new(MonitorFd: 40, ConsoleFd: 41, Disks: []);

    private static DomainDefinition Def(Func<DomainDefinition, DomainDefinition>? change = null)
    {
        var d = new DomainDefinition { Name = "vm1", Uuid = Uuid, Driver = DriverKind.Qemu, MemoryMiB = 128, Vcpus = 2 };
        return change is null ? d : change(d);
    }

    private static IReadOnlyList<string> Build(DomainDefinition d, string accel = "tcg", bool sandbox = true, QemuFiles? files = null) =>
        QemuCommandLine.Build("/usr/bin/qemu-system-x86_64", d, files ?? Files, accel, sandbox);

    /// <summary>The value that follows <paramref name="option"/> each time it appears.</summary>
    private static List<string> ValuesOf(IReadOnlyList<string> argv, string option) =>
        argv.Select((a, i) => (a, i)).Where(x => x.a == option && x.i + 1 < argv.Count).Select(x => argv[x.i + 1]).ToList();

    [Fact]
    public void Build_SerialPort_IsAnInheritedListeningSocket_LoggedByQemuThroughAnInheritedDescriptor()
    {
        var argv = Build(Def(), files: Files with { SerialFd = 42 });
        Assert.Equal(["socket,id=monitor,fd=40,server=on,wait=off", "socket,id=console,fd=42,server=on,wait=off,logfile=/dev/fdset/1,logappend=on"],
            ValuesOf(argv, "-chardev"));
        Assert.Equal(["fd=41,set=1"], ValuesOf(argv, "-add-fd"));
        Assert.Equal(["chardev:console"], ValuesOf(argv, "-serial"));
    }

    [Fact]
    public void Build_Vnc_ByDefaultOnlyWithDisks_ListensNowhere_AndHasADisplayAdapter()
    {
        Assert.Empty(ValuesOf(Build(Def()), "-vnc"));
        var on = Build(Def(d => d with { Graphics = new GraphicsConfig { Vnc = true } }));
        Assert.Equal(["none"], ValuesOf(on, "-vnc"));
        Assert.Equal(["std"], ValuesOf(on, "-vga"));
        Assert.True(Def(d => d with { Disks = [new DiskConfig { Path = "/x" }] }).VncEnabled);
        Assert.False(Def(d => d with { Disks = [new DiskConfig { Path = "/x" }], Graphics = new GraphicsConfig { Vnc = false } }).VncEnabled);
    }

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
        // Nothing by path: the monitor is the inherited listening socket, the console an inherited log descriptor.
        Assert.Equal(["socket,id=monitor,fd=40,server=on,wait=off", "file,id=console,path=/dev/fdset/1,append=on"], ValuesOf(argv, "-chardev"));
        Assert.Equal(["fd=41,set=1"], ValuesOf(argv, "-add-fd"));
        Assert.Equal(["chardev=monitor,mode=control"], ValuesOf(argv, "-mon"));
        Assert.Equal(["chardev:console"], ValuesOf(argv, "-serial"));
        Assert.Equal([QemuCommandLine.SandboxOptions], ValuesOf(argv, "-sandbox"));
        Assert.Equal("-S", argv[^1]);
        Assert.Empty(ValuesOf(argv, "-drive"));
        Assert.Empty(ValuesOf(argv, "-blockdev"));
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
    public void Build_DisksAndNics_AreExplicitBlockdevChainsFromInheritedDescriptors()
    {
        var files = Files with
        {
            Disks =
            [
                [new QemuDiskLayer(50, "qcow2", false), new QemuDiskLayer(51, "raw", true)],
                [new QemuDiskLayer(52, "raw", true)],
            ],
        };
        var argv = Build(Def(d => d with
        {
            Disks = [new DiskConfig { Path = "/img/a.qcow2", Format = DiskFormat.Qcow2 }, new DiskConfig { Path = "/img/b.iso", Bus = DiskBus.Sata, ReadOnly = true }],
            Nics = [new NicConfig { Mode = NicMode.User }, new NicConfig { Mode = NicMode.None }],
        }), files: files);

        // Each descriptor in a set of its own; the base of a chain is declared first.
        Assert.Equal(["fd=41,set=1", "fd=51,set=2", "fd=50,set=3", "fd=52,set=4"], ValuesOf(argv, "-add-fd"));
        var nodes = ValuesOf(argv, "-blockdev").Select(j => System.Text.Json.JsonDocument.Parse(j).RootElement).ToList();
        Assert.Equal(6, nodes.Count);
        string? S(System.Text.Json.JsonElement e, string p) => e.TryGetProperty(p, out var v) && v.ValueKind == System.Text.Json.JsonValueKind.String ? v.GetString() : null;
        Assert.Equal(("file", "/dev/fdset/2", "disk0-file1"), (S(nodes[0], "driver"), S(nodes[0], "filename"), S(nodes[0], "node-name")));
        Assert.Equal(("raw", "disk0-file1", "disk0-format1"), (S(nodes[1], "driver"), S(nodes[1], "file"), S(nodes[1], "node-name")));
        Assert.True(nodes[1].GetProperty("read-only").GetBoolean());
        Assert.Equal(("qcow2", "disk0-file0", "disk0-format1"), (S(nodes[3], "driver"), S(nodes[3], "file"), S(nodes[3], "backing")));
        Assert.False(nodes[3].GetProperty("read-only").GetBoolean());
        Assert.Equal(("file", "/dev/fdset/4"), (S(nodes[4], "driver"), S(nodes[4], "filename")));
        Assert.True(nodes[5].GetProperty("read-only").GetBoolean());
        Assert.Empty(ValuesOf(argv, "-drive"));
        Assert.Equal(["virtio-blk-pci,drive=disk0-format0,id=disk0", "ide-hd,drive=disk1-format0,id=disk1,bus=ide.0", "virtio-net-pci,netdev=net0,romfile="],
            ValuesOf(argv, "-device"));
        Assert.Equal(["user,id=net0"], ValuesOf(argv, "-netdev"));
        Assert.DoesNotContain(argv, a => a.Contains("/img/", StringComparison.Ordinal)); // no user path reaches QEMU
    }

    [Fact]
    public void Build_Qcow2WithoutBacking_SaysSoExplicitly()
    {
        var files = Files with { Disks = [[new QemuDiskLayer(50, "qcow2", false)]] };
        var argv = Build(Def(d => d with { Disks = [new DiskConfig { Path = "/img/a.qcow2", Format = DiskFormat.Qcow2 }] }), files: files);

        var format = System.Text.Json.JsonDocument.Parse(ValuesOf(argv, "-blockdev")[1]).RootElement;
        Assert.Equal(System.Text.Json.JsonValueKind.Null, format.GetProperty("backing").ValueKind); // never read from the header
    }

    [Fact]
    public void Build_IdeDisksOnPc_FillTwoUnitsPerBus()
    {
        var files = Files with { Disks = [[new QemuDiskLayer(50, "raw", false)], [new QemuDiskLayer(51, "raw", false)], [new QemuDiskLayer(52, "raw", false)]] };
        var argv = Build(Def(d => d with
        {
            Machine = MachineType.Pc,
            Disks = [new DiskConfig { Path = "/a", Bus = DiskBus.Ide }, new DiskConfig { Path = "/b", Bus = DiskBus.Ide }, new DiskConfig { Path = "/c", Bus = DiskBus.Ide }],
        }), files: files);

        Assert.Equal(["ide-hd,drive=disk0-format0,id=disk0,bus=ide.0,unit=0", "ide-hd,drive=disk1-format0,id=disk1,bus=ide.0,unit=1", "ide-hd,drive=disk2-format0,id=disk2,bus=ide.1,unit=0"],
            ValuesOf(argv, "-device"));
    }

    [Fact]
    public void Build_KernelBoot_PassesTheResolvedKernelInitrdAndCmdlineAsWholeArguments()
    {
        var argv = Build(Def(d => d with { Boot = new BootConfig { Kernel = "/link/k", Initrd = "/link/i", Cmdline = "console=ttyS0 quiet, panic=-1" } }),
            files: Files with { Kernel = "/img/k,1", Initrd = "/img/i=2" });

        Assert.Equal(["/img/k,1"], ValuesOf(argv, "-kernel"));
        Assert.Equal(["/img/i=2"], ValuesOf(argv, "-initrd"));
        Assert.Equal(["console=ttyS0 quiet, panic=-1"], ValuesOf(argv, "-append"));
    }

    [Theory]
    [InlineData("vm,debug-threads=off")]
    [InlineData("a,,b")]
    public void Build_CommasInAName_AreDoubledSoTheyCannotAddOptions(string name)
    {
        var argv = Build(Def(d => d with { Name = name }));

        var options = SplitQemuOptions(Assert.Single(ValuesOf(argv, "-name")));
        Assert.Equal(("guest", name), options[0]);
        Assert.Equal(["guest", "debug-threads"], options.Select(o => o.Key).ToArray());
    }

    [Fact]
    public void Build_NeverAddsAnArgumentForSpacesInValues()
    {
        var argv = Build(Def(d => d with { Boot = new BootConfig { Kernel = "/img/my kernel", Cmdline = "a b  c" } }), files: Files with { Kernel = "/img/my kernel" });

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
