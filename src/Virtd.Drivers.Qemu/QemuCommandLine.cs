using System.Globalization;
using System.Text.Json;
using Virtd.Core.Domains;

namespace Virtd.Drivers.Qemu;

/// <summary>Where one VM's runtime files are.</summary>
public sealed record QemuPaths(string Monitor, string Status, string Log, string Console, string Serial)
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
        Path.Combine(logDirectory, $"{uuid:D}.console.log"),
        Path.Combine(runDirectory, $"{uuid:D}.serial"));
}

/// <summary>One file of a disk's chain as QEMU receives it: an inherited descriptor, its format, read-only or not.</summary>
public sealed record QemuDiskLayer(int Fd, string Format, bool ReadOnly);

/// <summary>
/// What QEMU is given open rather than by path: the monitor's listening socket, the serial port's listening socket and
/// its log, every file of every disk chain (top first). Kernel and initrd are paths resolved and checked at start (QEMU
/// reads them itself).
/// </summary>
public sealed record QemuFiles(int MonitorFd, int ConsoleFd, IReadOnlyList<IReadOnlyList<QemuDiskLayer>> Disks, string? Kernel = null, string? Initrd = null,
    int SerialFd = -1);

/// <summary>
/// Builds QEMU's argv from a definition (libvirt's qemu_command.c): a list of arguments, never a shell
/// line. A user value that lands inside a QEMU option string (<c>key=value,key=value</c>) has every
/// <c>,</c> doubled, so a name can never add an option; values that are whole arguments (<c>-append</c>) are passed as
/// they are. QEMU opens no file by a path the user gave: descriptors come through <c>-add-fd</c> and each disk is an
/// explicit <c>-blockdev</c> chain (JSON, format always given, <c>backing</c> named or <c>null</c>), so nothing is
/// probed from a header a guest could have written.
/// </summary>
public static class QemuCommandLine
{
    public const string SandboxOptions = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

    /// <summary>Escapes a value for a QEMU option string: <c>,</c> becomes <c>,,</c>.</summary>
    public static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    public static IReadOnlyList<string> Build(string binary, DomainDefinition d, QemuFiles files, string accel, bool sandbox)
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
        var set = 0;
        argv.AddRange(
        [
            "-m", d.MemoryMiB.ToString(inv),
            "-smp", d.Vcpus.ToString(inv),
            "-nodefaults", "-no-user-config",
            "-display", "none",
            // Guest power-off pauses QEMU instead of ending it, so virtd learns why and can reboot it (fake reboot).
            "-no-shutdown",
            "-chardev", $"socket,id=monitor,fd={files.MonitorFd.ToString(inv)},server=on,wait=off",
            "-mon", "chardev=monitor,mode=control",
            "-add-fd", $"fd={files.ConsoleFd.ToString(inv)},set={(++set).ToString(inv)}",
        ]);
        // The serial port is a socket the daemon connects to (and reconnects to after a restart); QEMU itself logs what
        // the guest writes, so the log is whole even while no daemon listens.
        argv.AddRange(files.SerialFd >= 0
            ? ["-chardev", $"socket,id=console,fd={files.SerialFd.ToString(inv)},server=on,wait=off,logfile=/dev/fdset/{set.ToString(inv)},logappend=on"]
            : ["-chardev", $"file,id=console,path=/dev/fdset/{set.ToString(inv)},append=on"]);
        argv.AddRange(["-serial", "chardev:console"]);
        // VNC with no listener: each viewer is a socket handed to QEMU over the monitor (add_client), so QEMU opens nothing.
        if (d.VncEnabled) argv.AddRange(["-vga", "std", "-vnc", "none"]);
        if (files.Kernel is { } kernel) argv.AddRange(["-kernel", kernel]);
        if (files.Initrd is { } initrd) argv.AddRange(["-initrd", initrd]);
        if (d.Boot?.Cmdline is { Length: > 0 } cmdline && files.Kernel is not null) argv.AddRange(["-append", cmdline]);
        var ide = 0;
        for (var i = 0; i < files.Disks.Count; i++)
        {
            var layers = files.Disks[i];
            // Bottom first: a format node names the node below it as its backing.
            for (var j = layers.Count - 1; j >= 0; j--)
            {
                var layer = layers[j];
                var readOnly = j > 0 || layer.ReadOnly;
                argv.AddRange(["-add-fd", $"fd={layer.Fd.ToString(inv)},set={(++set).ToString(inv)}"]);
                argv.AddRange(["-blockdev", Json(w =>
                {
                    w.WriteString("driver", "file");
                    w.WriteString("filename", $"/dev/fdset/{set.ToString(inv)}");
                    w.WriteString("node-name", $"disk{i}-file{j}");
                    w.WriteBoolean("read-only", readOnly);
                })]);
                argv.AddRange(["-blockdev", Json(w =>
                {
                    w.WriteString("driver", layer.Format);
                    w.WriteString("file", $"disk{i}-file{j}");
                    w.WriteString("node-name", $"disk{i}-format{j}");
                    w.WriteBoolean("read-only", readOnly);
                    if (layer.Format == "qcow2")
                    {
                        if (j + 1 < layers.Count) w.WriteString("backing", $"disk{i}-format{j + 1}");
                        else w.WriteNull("backing");
                    }
                })]);
            }
            var disk = d.Disks[i];
            var device = disk.Bus == DiskBus.Virtio
                ? $"virtio-blk-pci,drive=disk{i}-format0,id=disk{i.ToString(inv)}"
                : machine == "q35"
                    ? $"ide-hd,drive=disk{i}-format0,id=disk{i.ToString(inv)},bus=ide.{ide.ToString(inv)}"
                    : $"ide-hd,drive=disk{i}-format0,id=disk{i.ToString(inv)},bus=ide.{(ide / 2).ToString(inv)},unit={(ide % 2).ToString(inv)}";
            if (disk.Bus != DiskBus.Virtio) ide++;
            argv.AddRange(["-device", device]);
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

    private static string Json(Action<Utf8JsonWriter> body)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>
    /// Set in QEMU's environment to the run directory of the daemon that started it: its argv names no path, so this
    /// is how an operator (or a test) tells one daemon's VMs from another's (<c>/proc/PID/environ</c>).
    /// </summary>
    public const string RunDirectoryVariable = "VIRTD_RUN_DIRECTORY";

    /// <summary>The environment QEMU gets: nothing of the daemon's own.</summary>
    public static IReadOnlyList<string> Environment { get; } =
        ["LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
}
