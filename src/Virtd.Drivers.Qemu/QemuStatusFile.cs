using System.Text;
using System.Text.Json;
using Virtd.Core;
using Virtd.Core.Domains;
using Virtd.Core.Persistence;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// What a restarted daemon needs to take a running VM back: which process (pid and its start time,
/// so a reused pid is never mistaken for it), where its monitor is, and the definition it runs.
/// One file per running domain in the run directory, written atomically when the VM is spawned.
/// </summary>
public sealed record QemuStatusFile(
    string Name,
    Guid Uuid,
    int Pid,
    ulong ProcessStartTime,
    DateTimeOffset StartedAt,
    string Monitor,
    string Binary,
    DomainDefinition Definition)
{
    private static readonly System.Text.Json.Serialization.Metadata.JsonTypeInfo<QemuStatusFile> Info = VirtdJson.Info<QemuStatusFile>(QemuJsonOptions.Value);

    /// <summary>Atomic (a reader sees the old file or the new one), not fsynced: it must survive the daemon, not the host.</summary>
    /// <summary>Owner-only: the run directory is open to everyone (for the read-only API socket), the VM's definition is not.</summary>
    public void Write(string path) => AtomicFile.Write(path, JsonSerializer.SerializeToUtf8Bytes(this, Info), durable: false, AtomicFile.OwnerOnly);

    /// <summary>The status at <paramref name="path"/>, or null with why it cannot be used.</summary>
    public static (QemuStatusFile? Status, string? Problem) TryRead(string path)
    {
        try
        {
            var status = JsonSerializer.Deserialize(File.ReadAllBytes(path), Info);
            if (status is null || status.Pid <= 1 || status.Definition is null) return (null, "incomplete status file");
            return (status, null);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or NotSupportedException)
        {
            return (null, e.Message);
        }
    }

    /// <summary>True when <paramref name="pid"/> is alive and is this VM's QEMU: same start time, its UUID on the command line.</summary>
    public bool Matches(int pid)
    {
        if (Native.ProcFs.ReadStat(pid) is not { } stat || stat.State is 'Z' or 'X' or 'x') return false;
        if (stat.StartTime != ProcessStartTime) return false;
        var uuid = Uuid.ToString("D");
        return Native.ProcFs.ReadCmdline(pid) is { } argv && argv.Contains(uuid);
    }
}

/// <summary>The domain's log: virtd's own lines about each run, and QEMU's stdout and stderr.</summary>
internal static class QemuLog
{
    private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false);

    public static void Append(string path, string line)
    {
        try
        {
            File.AppendAllText(path, $"{DateTimeOffset.UtcNow:yyyy-MM-dd'T'HH:mm:ss.fff'Z'} virtd: {line}\n", Utf8);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Current length: QEMU's output of a run starts there.</summary>
    public static long Length(string path)
    {
        try { return new FileInfo(path).Length; }
        catch (IOException) { return 0; }
    }

    /// <summary>The last few lines QEMU wrote since <paramref name="offset"/>, joined, at most ~300 characters.</summary>
    public static string? Tail(string path, long offset, int lines = 3)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var start = Math.Max(offset, fs.Length - 8192);
            if (start >= fs.Length) return null;
            fs.Seek(start, SeekOrigin.Begin);
            var text = new StreamReader(fs, Encoding.UTF8).ReadToEnd();
            var last = text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.Contains(" virtd: ", StringComparison.Ordinal))
                .TakeLast(lines).ToList();
            if (last.Count == 0) return null;
            var joined = string.Join(" / ", last);
            return joined.Length > 300 ? joined[..300] + "…" : joined;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(QemuStatusFile))]
[System.Text.Json.Serialization.JsonSerializable(typeof(QemuCapabilitiesCache))]
internal sealed partial class QemuJson : System.Text.Json.Serialization.JsonSerializerContext;

/// <summary>The project's JSON settings with the QEMU driver's own files (<see cref="QemuJson"/>) first.</summary>
internal static class QemuJsonOptions
{
    public static readonly JsonSerializerOptions Value = VirtdJson.Freeze(VirtdJson.Configure(new JsonSerializerOptions(), [QemuJson.Default]));
}
