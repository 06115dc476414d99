using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Virtd.Core;
using Virtd.Core.Persistence;
using Virtd.Drivers.Qemu.Monitor;

namespace Virtd.Drivers.Qemu;

/// <summary>What QEMU said about itself at start (libvirt's capabilities probe), kept for the daemon's life.</summary>
public sealed record QemuCapabilities(string Version, string? Package, IReadOnlyList<string> Machines, bool Sandbox);

/// <summary>A probe's answer as kept on disk, with the identity of the binary that gave it.</summary>
internal sealed record QemuCapabilitiesCache(string Binary, Native.FileIdentity Identity, QemuCapabilities Capabilities);

/// <summary>Finds the QEMU binary and asks it, once, what it is and can do.</summary>
public static class QemuDiscovery
{
    public const string DefaultBinaryName = "qemu-system-x86_64";

    /// <summary>The binary to use, or null with the reason.</summary>
    public static (string? Path, string? Problem) FindBinary(string? configured)
    {
        if (configured is not null)
        {
            return IsExecutable(configured)
                ? (configured, null)
                : (null, $"Qemu:Binary '{configured}' does not exist or is not executable");
        }
        foreach (var dir in (System.Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
                     .Concat(["/usr/bin", "/usr/local/bin"]))
        {
            var candidate = System.IO.Path.Combine(dir, DefaultBinaryName);
            if (IsExecutable(candidate)) return (candidate, null);
        }
        return (null, $"no {DefaultBinaryName} on PATH; install QEMU (Debian: apt-get install qemu-system-x86) or set Qemu:Binary");
    }

    private static bool IsExecutable(string path)
    {
        try
        {
            return File.Exists(path)
                && (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>The accelerator to run guests with: KVM only when it can really be used.</summary>
    public static string ChooseAccelerator(QemuAccel setting) => setting switch
    {
        QemuAccel.Kvm => "kvm",
        QemuAccel.Tcg => "tcg",
        _ => KvmUsable() ? "kvm" : "tcg",
    };

    /// <summary>
    /// /dev/kvm alone is not enough (on these machines it exists but the CPU lacks vmx/svm and guests
    /// hang): the device must open read-write and the CPU must offer hardware virtualisation.
    /// </summary>
    public static bool KvmUsable()
    {
        try
        {
            using (File.Open("/dev/kvm", FileMode.Open, FileAccess.ReadWrite)) { }
            var flags = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? "";
            var words = flags.Split([' ', '\t', ':'], StringSplitOptions.RemoveEmptyEntries);
            return words.Contains("vmx") || words.Contains("svm");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Path, Native.FileIdentity? Identity), QemuCapabilities> Probed = new();

    /// <summary>
    /// What <paramref name="binary"/> can do. Asking QEMU means starting it (40–50 ms here, most of a restart's time), so
    /// the answer is kept in <paramref name="cacheFile"/> with the binary's identity (device, inode, size, change and
    /// modification times), as libvirt keeps its capabilities: the next daemon reads it instead, and a QEMU that was
    /// upgraded or replaced no longer matches and is asked again. Also kept in memory by the same identity, so several
    /// daemons in one process (tests) ask QEMU only once.
    /// </summary>
    public static async Task<QemuCapabilities> ProbeAsync(string binary, string? cacheFile, CancellationToken cancellationToken)
    {
        var path = Path.GetFullPath(binary);
        var identity = Native.Users.Identify(path);
        if (cacheFile is not null && identity is { } id && ReadCache(cacheFile, path, id) is { } cached) return cached;
        if (!Probed.TryGetValue((path, identity), out var caps))
        {
            caps = await ProbeUncachedAsync(path, cancellationToken).ConfigureAwait(false);
            Probed[(path, identity)] = caps;
        }
        if (cacheFile is not null && identity is { } known) WriteCache(cacheFile, new QemuCapabilitiesCache(path, known, caps));
        return caps;
    }

    private static QemuCapabilities? ReadCache(string cacheFile, string path, Native.FileIdentity identity)
    {
        try
        {
            var cache = JsonSerializer.Deserialize(File.ReadAllBytes(cacheFile), CacheInfo);
            return cache is not null && cache.Binary == path && cache.Identity == identity ? cache.Capabilities : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or NotSupportedException)
        {
            return null; // absent or unreadable: probe
        }
    }

    private static void WriteCache(string cacheFile, QemuCapabilitiesCache cache)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(cacheFile)!);
            AtomicFile.Write(cacheFile, JsonSerializer.SerializeToUtf8Bytes(cache, CacheInfo), durable: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A cache only: the next start probes again.
        }
    }

    private static readonly System.Text.Json.Serialization.Metadata.JsonTypeInfo<QemuCapabilitiesCache> CacheInfo =
        VirtdJson.Info<QemuCapabilitiesCache>(QemuJsonOptions.Value);

    /// <summary>
    /// Starts QEMU with no machine and its monitor on stdio, reads version, machine types and whether
    /// <c>-sandbox</c> exists, and quits it. Bounded by <paramref name="cancellationToken"/>.
    /// </summary>
    private static async Task<QemuCapabilities> ProbeUncachedAsync(string binary, CancellationToken cancellationToken)
    {
        var psi = new ProcessStartInfo(binary)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
        };
        foreach (var a in (string[])["-machine", "none", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"])
            psi.ArgumentList.Add(a);
        psi.Environment.Clear();
        foreach (var kv in QemuCommandLine.Environment)
        {
            var eq = kv.IndexOf('=', StringComparison.Ordinal);
            psi.Environment[kv[..eq]] = kv[(eq + 1)..];
        }

        using var process = Process.Start(psi) ?? throw new IOException($"cannot start {binary}");
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        try
        {
            var input = process.StandardInput;
            var replies = new Dictionary<long, QmpMessage>();
            string[] commands = ["qmp_capabilities", "query-version", "query-machines", "query-command-line-options"];
            for (var i = 0; i < commands.Length; i++)
                await input.BaseStream.WriteAsync(QmpProtocol.EncodeCommand(commands[i], i + 1), cancellationToken).ConfigureAwait(false);
            await input.BaseStream.WriteAsync(QmpProtocol.EncodeCommand("quit", 99), cancellationToken).ConfigureAwait(false);
            await input.FlushAsync(cancellationToken).ConfigureAwait(false);

            while (replies.Count < commands.Length)
            {
                var line = await process.StandardOutput.ReadLineAsync(cancellationToken).ConfigureAwait(false)
                    ?? throw new IOException($"{binary} closed its monitor during the probe: {(await stderr.ConfigureAwait(false)).Trim()}");
                var bytes = new System.Buffers.ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(line));
                switch (QmpProtocol.Parse(bytes))
                {
                    case QmpReturn { Id: { } id } r: replies[id] = r; break;
                    case QmpError { Id: { } id } e: replies[id] = e; break;
                }
            }
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            return Read(replies);
        }
        finally
        {
            if (!process.HasExited)
            {
                try { process.Kill(); }
                catch (InvalidOperationException) { }
            }
        }
    }

    private static QemuCapabilities Read(Dictionary<long, QmpMessage> replies)
    {
        var version = "unknown";
        string? package = null;
        if (replies.GetValueOrDefault(2) is QmpReturn v)
        {
            version = QmpProtocol.ReadVersion(v.Value);
            if (v.Value.TryGetProperty("package", out var p) && p.ValueKind == JsonValueKind.String)
                package = p.GetString()!.Trim() is { Length: > 0 } s ? s : null;
        }
        var machines = new List<string>();
        if (replies.GetValueOrDefault(3) is QmpReturn m && m.Value.ValueKind == JsonValueKind.Array)
        {
            foreach (var e in m.Value.EnumerateArray())
            {
                if (e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String) machines.Add(n.GetString()!);
                if (e.TryGetProperty("alias", out var a) && a.ValueKind == JsonValueKind.String) machines.Add(a.GetString()!);
            }
        }
        machines.Sort(StringComparer.Ordinal);
        var sandbox = replies.GetValueOrDefault(4) is QmpReturn o && o.Value.ValueKind == JsonValueKind.Array
            && o.Value.EnumerateArray().Any(e => e.TryGetProperty("option", out var name) && name.GetString() == "sandbox");
        return new QemuCapabilities(version, package, machines.Distinct().ToList(), sandbox);
    }
}
