using System.Globalization;
using Virtd.Core.Domains;

namespace Virtd.Drivers.Qemu;

/// <summary>Where one VM's runtime files are.</summary>
public sealed record QemuPaths(string Monitor, string Status, string Log, string Console)
{
    /// <summary>
    /// Every file is named by the domain's UUID: the monitor socket and status file under the run directory (short and
    /// unique: socket paths are limited to 108 bytes), the logs under the state directory. A name would let domain
    /// <c>x.console</c> write into the log of domain <c>x</c>'s console.
    /// </summary>
    public static QemuPaths For(string runDirectory, string logDirectory, Guid uuid) => new(
        Path.Combine(runDirectory, $"{uuid:D}.qmp"),
        Path.Combine(runDirectory, $"{uuid:D}.status.json"),
        Path.Combine(logDirectory, $"{uuid:D}.log"),
        Path.Combine(logDirectory, $"{uuid:D}.console.log"));
}

/// <summary>
/// Builds QEMU's argv from a definition (libvirt's qemu_command.c): a list of arguments, never a shell
/// line. A user value that lands inside a QEMU option string (<c>key=value,key=value</c>) has every
/// <c>,</c> doubled, so a name or path can never add an option; values that are whole arguments
/// (<c>-kernel</c>, <c>-initrd</c>, <c>-append</c>) are passed as they are.
/// </summary>
public static class QemuCommandLine
{
    public const string SandboxOptions = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

    /// <summary>Escapes a value for a QEMU option string: <c>,</c> becomes <c>,,</c>.</summary>
    public static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    public static IReadOnlyList<string> Build(string binary, DomainDefinition d, QemuPaths paths, string accel, bool sandbox)
    {
        var inv = CultureInfo.InvariantCulture;
        var machine = d.Machine == MachineType.Pc ? "pc" : "q35";
        var argv = new List<string>
        {
            binary,
            "-name", $"guest={Escape(d.Name)},debug-threads=on",
            "-uuid", (d.Uuid ?? throw new ArgumentException("definition has no UUID", nameof(d))).ToString("D"),
            "-machine", $"{machine},accel={accel}",
        };
        if (accel == "kvm") argv.AddRange(["-cpu", "host"]);
        argv.AddRange(
        [
            "-m", d.MemoryMiB.ToString(inv),
            "-smp", d.Vcpus.ToString(inv),
            "-nodefaults", "-no-user-config",
            "-display", "none",
            // Guest power-off pauses QEMU instead of ending it, so virtd learns why and can reboot it (fake reboot).
            "-no-shutdown",
            "-chardev", $"socket,id=monitor,path={Escape(paths.Monitor)},server=on,wait=off",
            "-mon", "chardev=monitor,mode=control",
            "-chardev", $"file,id=console,path={Escape(paths.Console)},append=on",
            "-serial", "chardev:console",
        ]);
        if (d.Boot is { } boot)
        {
            if (boot.Kernel is { Length: > 0 } kernel) argv.AddRange(["-kernel", kernel]);
            if (boot.Initrd is { Length: > 0 } initrd) argv.AddRange(["-initrd", initrd]);
            if (boot.Cmdline is { Length: > 0 } cmdline) argv.AddRange(["-append", cmdline]);
        }
        for (var i = 0; i < d.Disks.Count; i++)
        {
            var disk = d.Disks[i];
            var format = disk.Format == DiskFormat.Qcow2 ? "qcow2" : "raw";
            var bus = disk.Bus == DiskBus.Virtio ? "virtio" : "ide";
            var drive = $"file={Escape(disk.Path)},format={format},if={bus},index={i.ToString(inv)},media=disk";
            if (disk.ReadOnly) drive += ",readonly=on";
            argv.AddRange(["-drive", drive]);
        }
        for (var i = 0; i < d.Nics.Count; i++)
        {
            if (d.Nics[i].Mode != NicMode.User) continue;
            var id = $"net{i.ToString(inv)}";
            // romfile= : no iPXE option ROM (not installed with --no-install-recommends, and not needed).
            argv.AddRange(["-netdev", $"user,id={id}", "-device", $"virtio-net-pci,netdev={id},romfile="]);
        }
        if (sandbox) argv.AddRange(["-sandbox", SandboxOptions]);
        argv.Add("-S");
        return argv;
    }

    /// <summary>The environment QEMU gets: nothing of the daemon's own.</summary>
    public static IReadOnlyList<string> Environment { get; } =
        ["LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
}
