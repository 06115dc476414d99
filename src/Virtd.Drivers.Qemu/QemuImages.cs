using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Drivers.Qemu.Native;

namespace Virtd.Drivers.Qemu;

/// <summary>One file of a disk's image chain, top first: where it is (resolved) and what format it has.</summary>
internal sealed record ImageLayer(string Path, string Format, FileIdentity Identity);

/// <summary>A disk's whole chain, checked: every file inside a pool, every format known, no external data file.</summary>
internal sealed record ImageChain(IReadOnlyList<ImageLayer> Layers);

/// <summary>Why a disk's chain was refused; <see cref="Message"/> names the disk, never a host path.</summary>
internal sealed class ImageProblem(int disk, string message) : Exception(message)
{
    public int Disk { get; } = disk;
}

/// <summary>
/// Reads each disk's image chain with <c>qemu-img info --backing-chain --output=json</c>, run as <c>Qemu:User</c> (so
/// a crafted header is parsed with no more rights than the guest's own QEMU) within <c>Qemu:ImageTimeout</c>, and
/// refuses a chain with a file outside every pool, a backing file of no recorded format (QEMU would have to guess it
/// from bytes a guest may have written), or an external data file. A chain is read again whenever any of its files
/// changed (inode, size, modification or change time); otherwise the last reading stands, so a start costs a few
/// <c>statx</c> calls. The same check answers a define (400) and guards every start (<c>image-unsafe</c>).
/// </summary>
public sealed class QemuImages : IImageChecker, IVolumeTool
{
    private const int CacheLimit = 4096;
    private readonly QemuOptions _options;
    private readonly StoragePaths _pools;
    private readonly ILogger<QemuImages> _log;
    private readonly ConcurrentDictionary<(string Path, DiskFormat Format), ImageChain> _cache = new();
    private readonly string? _qemuImg;
    private QemuConfinement? _confinement;
    private string? _problem;

    public QemuImages(QemuOptions options, StoragePaths pools, ILogger<QemuImages> log)
    {
        _options = options;
        _pools = pools;
        _log = log;
        _qemuImg = FindQemuImg(options);
        if (_qemuImg is null) _problem = "qemu-img (Debian package qemu-utils) is not installed, so disk images cannot be checked";
    }

    /// <summary>Runs as the same user as QEMU; set by the driver once it knows (at start).</summary>
    internal void UseConfinement(QemuConfinement? confinement, string? problem)
    {
        _confinement = confinement;
        if (problem is not null) _problem ??= problem;
    }

    internal int CachedChains => _cache.Count;

    /// <summary>The domain's disks that QEMU would refuse to be given, keyed as in the definition (<c>disks[0]</c>).</summary>
    public async Task<IReadOnlyDictionary<string, string[]>?> CheckAsync(DomainDefinition definition, CancellationToken cancellationToken)
    {
        Dictionary<string, string[]>? errors = null;
        for (var i = 0; i < definition.Disks.Count; i++)
        {
            try { await InspectAsync(definition.Disks[i], i, cancellationToken).ConfigureAwait(false); }
            catch (ImageProblem p)
            {
                errors ??= [];
                errors[$"disks[{i}]"] = [p.Message];
            }
        }
        return errors;
    }

    /// <summary>The disk's checked chain; throws <see cref="ImageProblem"/>.</summary>
    internal async Task<ImageChain> InspectAsync(DiskConfig disk, int index, CancellationToken cancellationToken)
    {
        var top = _pools.Resolve(_pools.DiskPath(disk)) ?? throw Outside(index);
        var format = disk.Format ?? DiskFormat.Raw;
        var key = (top, format);
        if (_cache.TryGetValue(key, out var known) && known.Layers.All(l => Users.Identify(l.Path) == l.Identity)) return known;
        if (_problem is not null) throw new ImageProblem(index, $"disk {index}: {_problem}");
        if (_confinement is null) throw new ImageProblem(index, $"disk {index}: the QEMU driver is not ready yet");
        var chain = await ReadChainAsync(top, format, index, cancellationToken).ConfigureAwait(false);
        if (_cache.Count >= CacheLimit) _cache.Clear();
        _cache[key] = chain;
        return chain;
    }

    private async Task<ImageChain> ReadChainAsync(string top, DiskFormat format, int index, CancellationToken cancellationToken)
    {
        // Identities first: a file replaced while qemu-img reads it shows as changed at the next start.
        var before = Users.Identify(top) ?? throw Outside(index);
        var (success, output, error) = await RunAsync(
            [_qemuImg!, "info", "--backing-chain", "--output=json", "--force-share", "-f", FormatName(format), top], index, cancellationToken).ConfigureAwait(false);
        if (!success)
        {
            // Its words may name a file outside the pools: they go to the daemon's log, not to the client.
            _log.LogWarning("disk {Disk} ({Path}): qemu-img info failed: {Error}", index, top, error.Trim());
            // The image itself (inside a pool) may say what is wrong; anything about its chain gets the one message.
            var (ok, _, _) = await RunAsync([_qemuImg!, "info", "--output=json", "--force-share", "-f", FormatName(format), top], index, cancellationToken).ConfigureAwait(false);
            if (!ok) throw new ImageProblem(index, $"disk {index}: the image is not a valid {FormatName(format)} image, or cannot be read by {_confinement!.User.Name}");
            throw Outside(index);
        }

        var layers = new List<ImageLayer>();
        try
        {
            using var doc = JsonDocument.Parse(output);
            var items = doc.RootElement.EnumerateArray().ToList();
            string? expected = FormatName(format);
            for (var i = 0; i < items.Count; i++)
            {
                var item = items[i];
                var file = item.GetProperty("filename").GetString() ?? "";
                var real = _pools.Resolve(file);
                if (real is null)
                {
                    _log.LogWarning("disk {Disk} ({Path}): layer {Layer} of its chain, {File}, is outside every pool", index, top, i, file);
                    throw Outside(index);
                }
                var fmt = item.GetProperty("format").GetString();
                if (fmt != expected || fmt is not ("raw" or "qcow2"))
                    throw new ImageProblem(index, $"disk {index}: layer {i} of its chain is {fmt ?? "of no known format"}, not {expected}");
                if (item.TryGetProperty("format-specific", out var specific) && specific.TryGetProperty("data", out var data) && data.TryGetProperty("data-file", out _))
                    throw new ImageProblem(index, $"disk {index}: layer {i} of its chain keeps its data in an external data file, which virtd does not give QEMU");
                var identity = i == 0 ? before : Users.Identify(real) ?? throw Outside(index);
                layers.Add(new ImageLayer(real, fmt, identity));
                var hasBacking = item.TryGetProperty("backing-filename", out _);
                if (!hasBacking) break;
                if (!item.TryGetProperty("backing-filename-format", out var bf) || bf.GetString() is not { } backingFormat)
                    throw new ImageProblem(index, $"disk {index}: layer {i} names a backing file without its format; recreate it with qemu-img's -F");
                if (i + 1 >= items.Count) throw Outside(index);
                expected = backingFormat;
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException)
        {
            _log.LogWarning("disk {Disk} ({Path}): qemu-img info said something unexpected: {Error}", index, top, e.Message);
            throw new ImageProblem(index, $"disk {index}: its image could not be read");
        }
        if (layers.Count == 0) throw Outside(index);
        return new ImageChain(layers);
    }

    /// <summary>Runs qemu-img as QEMU's user within <c>Qemu:ImageTimeout</c>: success, stdout and stderr.</summary>
    private async Task<(bool Success, string Output, string Error)> RunAsync(IReadOnlyList<string> command, int index, CancellationToken cancellationToken)
    {
        try { return await RunAsync(command, asQemuUser: true, _options.ImageTimeout, null, cancellationToken).ConfigureAwait(false); }
        catch (TimeoutException)
        {
            _log.LogWarning("disk {Disk}: qemu-img did not answer within {Seconds} s; killed", index, _options.ImageTimeout.TotalSeconds);
            throw new ImageProblem(index, $"disk {index}: qemu-img did not finish reading the image within {_options.ImageTimeout.TotalSeconds:0.###} s (Qemu:ImageTimeout)");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new ImageProblem(index, $"disk {index}: qemu-img could not be started");
        }
    }

    /// <summary>
    /// Runs qemu-img, as QEMU's user or as the daemon, within <paramref name="timeout"/> (TimeoutException) or until
    /// cancelled; <paramref name="onOutput"/> sees stdout as it comes (a copy's progress).
    /// </summary>
    private async Task<(bool Success, string Output, string Error)> RunAsync(IReadOnlyList<string> command, bool asQemuUser, TimeSpan? timeout,
        Action<string>? onOutput, CancellationToken cancellationToken)
    {
        var prefix = asQemuUser ? _confinement!.Prefix : [];
        var psi = new ProcessStartInfo(prefix.Count > 0 ? prefix[0] : command[0])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = "/",
        };
        foreach (var a in prefix.Skip(1)) psi.ArgumentList.Add(a);
        foreach (var a in prefix.Count > 0 ? command : command.Skip(1)) psi.ArgumentList.Add(a);
        psi.Environment.Clear();
        foreach (var kv in QemuCommandLine.Environment) psi.Environment[kv[..kv.IndexOf('=')]] = kv[(kv.IndexOf('=') + 1)..];

        using var process = Process.Start(psi) ?? throw new System.ComponentModel.Win32Exception("qemu-img could not be started");
        var stdout = onOutput is null ? process.StandardOutput.ReadToEndAsync(cancellationToken) : ReadPiecesAsync(process.StandardOutput, onOutput, cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        if (timeout is { } t) deadline.CancelAfter(t);
        try
        {
            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            try { await process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None).ConfigureAwait(false); }
            catch (TimeoutException) { }
            if (cancellationToken.IsCancellationRequested) throw;
            throw new TimeoutException();
        }
        return (process.ExitCode == 0, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }

    /// <summary>stdout as it comes, split at '\r' and '\n' (qemu-img -p rewrites one line with '\r').</summary>
    private static async Task<string> ReadPiecesAsync(StreamReader reader, Action<string> onOutput, CancellationToken cancellationToken)
    {
        var buffer = new char[4096];
        var line = new System.Text.StringBuilder();
        int n;
        while ((n = await reader.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
        {
            for (var i = 0; i < n; i++)
            {
                if (buffer[i] is '\r' or '\n')
                {
                    if (line.Length > 0) onOutput(line.ToString());
                    line.Clear();
                }
                else if (line.Length < 1024) line.Append(buffer[i]);
            }
        }
        if (line.Length > 0) onOutput(line.ToString());
        return "";
    }

    // ---- volumes (IVolumeTool) ----

    string? IVolumeTool.Problem => _qemuImg is null ? _problem : null;

    private readonly ConcurrentDictionary<(string Path, DiskFormat Format), (FileIdentity Identity, ImageFacts Facts)> _facts = new();

    async Task<ImageFacts> IVolumeTool.InfoAsync(string path, DiskFormat format, CancellationToken cancellationToken)
    {
        var identity = Users.Identify(path) ?? throw VolumeGone();
        // A raw image is its bytes: its size is the file's, and nothing in it is read.
        if (format == DiskFormat.Raw) return new ImageFacts((long)identity.Size, Users.Allocated(path) ?? (long)identity.Size, null);
        if (_facts.TryGetValue((path, format), out var known) && known.Identity == identity) return known.Facts;
        var (ok, output, error) = await ToolAsync([_qemuImg!, "info", "--output=json", "--force-share", "-f", FormatName(format), path], asQemuUser: true, cancellationToken).ConfigureAwait(false);
        if (!ok) throw new VirtdException(ErrorCodes.ValidationFailed, 400, "Image unreadable", $"not a valid {FormatName(format)} image, or not readable by {_confinement!.User.Name}");
        try
        {
            using var doc = JsonDocument.Parse(output);
            var root = doc.RootElement;
            var backing = root.TryGetProperty("full-backing-filename", out var fb) ? fb.GetString()
                : root.TryGetProperty("backing-filename", out var b) ? b.GetString() : null;
            if (backing is not null && !backing.StartsWith('/')) backing = Path.Combine(Path.GetDirectoryName(path)!, backing);
            var facts = new ImageFacts(root.GetProperty("virtual-size").GetInt64(),
                root.TryGetProperty("actual-size", out var a) ? a.GetInt64() : new FileInfo(path).Length, backing);
            if (_facts.Count >= CacheLimit) _facts.Clear();
            _facts[(path, format)] = (identity, facts);
            return facts;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException)
        {
            _log.LogWarning("{Path}: qemu-img info said something unexpected: {Error} {Output}", path, e.Message, error);
            throw VirtdException.HypervisorError("qemu-img info gave an answer virtd does not understand (the daemon's log has it)");
        }
    }

    async Task<string> IVolumeTool.ProbeAsync(string path, CancellationToken cancellationToken)
    {
        var (ok, output, _) = await ToolAsync([_qemuImg!, "info", "--output=json", "--force-share", path], asQemuUser: true, cancellationToken).ConfigureAwait(false);
        if (!ok) return "unreadable";
        try
        {
            using var doc = JsonDocument.Parse(output);
            return doc.RootElement.GetProperty("format").GetString() ?? "unknown";
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException) { return "unknown"; }
    }

    async Task<string?> IVolumeTool.CheckChainAsync(string path, DiskFormat format, CancellationToken cancellationToken)
    {
        try
        {
            await InspectAsync(new DiskConfig { Path = path, Format = format }, 0, cancellationToken).ConfigureAwait(false);
            return null;
        }
        catch (ImageProblem p) { return p.Message.StartsWith("disk 0: ", StringComparison.Ordinal) ? p.Message["disk 0: ".Length..] : p.Message; }
    }

    async Task IVolumeTool.CreateAsync(string path, DiskFormat format, long capacity, string? backingFile, DiskFormat? backingFormat, CancellationToken cancellationToken)
    {
        List<string> command = [_qemuImg!, "create", "-q", "-f", FormatName(format)];
        // -u: the backing volume was checked by the caller, and is not opened again here (as the daemon's user).
        if (backingFile is not null) command.AddRange(["-u", "-b", backingFile, "-F", FormatName(backingFormat ?? DiskFormat.Raw)]);
        command.AddRange([path, capacity.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        var (ok, _, error) = await ToolAsync(command, asQemuUser: false, cancellationToken).ConfigureAwait(false);
        if (!ok) throw VolumeFailed("create", error);
    }

    async Task IVolumeTool.ResizeAsync(string path, DiskFormat format, long capacity, bool shrink, CancellationToken cancellationToken)
    {
        List<string> command = [_qemuImg!, "resize", "-q", "-f", FormatName(format)];
        if (shrink) command.Add("--shrink");
        command.AddRange([path, capacity.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        var (ok, _, error) = await ToolAsync(command, asQemuUser: false, cancellationToken).ConfigureAwait(false);
        if (!ok) throw VolumeFailed("resize", error);
        _facts.TryRemove((path, format), out _);
    }

    async Task IVolumeTool.CopyAsync(string source, DiskFormat sourceFormat, string target, DiskFormat targetFormat, Action<double> progress, CancellationToken cancellationToken)
    {
        // No time limit: a copy takes as long as its size needs; it ends when cancelled (DELETE of its job, daemon stop).
        var (ok, _, error) = await RunAsync([_qemuImg!, "convert", "-p", "-f", FormatName(sourceFormat), "-O", FormatName(targetFormat), source, target],
            asQemuUser: false, timeout: null, onOutput: line =>
            {
                // "    (12.50/100%)"
                var open = line.IndexOf('(');
                var slash = line.IndexOf('/', open + 1);
                if (open >= 0 && slash > open && double.TryParse(line.AsSpan(open + 1, slash - open - 1), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var percent))
                    progress(percent);
            }, cancellationToken).ConfigureAwait(false);
        if (!ok) throw VolumeFailed("copy", error);
    }

    void IVolumeTool.Adopt(string path)
    {
        if (_confinement is { SwitchUser: true } c && Users.EffectiveUid == 0)
        {
            Users.Chown(path, 0, c.User.Gid);
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        }
        else File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    private async Task<(bool Success, string Output, string Error)> ToolAsync(IReadOnlyList<string> command, bool asQemuUser, CancellationToken cancellationToken)
    {
        if (_qemuImg is null) throw new VirtdException(ErrorCodes.HypervisorUnavailable, 409, "qemu-img unavailable", _problem ?? "qemu-img is not installed");
        if (asQemuUser && _confinement is null) throw new VirtdException(ErrorCodes.NotReady, 503, "Not ready", "the QEMU driver is not ready yet");
        try { return await RunAsync(command, asQemuUser, _options.ImageTimeout, null, cancellationToken).ConfigureAwait(false); }
        catch (TimeoutException)
        {
            _log.LogWarning("qemu-img {Verb} did not answer within {Seconds} s; killed", command[1], _options.ImageTimeout.TotalSeconds);
            throw VirtdException.HypervisorError($"qemu-img {command[1]} did not finish within {_options.ImageTimeout.TotalSeconds:0.###} s (Qemu:ImageTimeout)");
        }
    }

    private VirtdException VolumeFailed(string verb, string error)
    {
        _log.LogWarning("qemu-img {Verb} failed: {Error}", verb, error.Trim());
        var said = error.Trim().Split('\n').LastOrDefault()?.Replace(_qemuImg + ": ", "", StringComparison.Ordinal) ?? "";
        return new VirtdException(ErrorCodes.InvalidState, 409, "Volume operation failed", $"qemu-img could not {verb} the volume: {said}");
    }

    private static VirtdException VolumeGone() => new(ErrorCodes.VolumeNotFound, 404, "Volume not found", "the volume's file is gone");

    /// <summary>One message whether the file is outside, missing or unreadable: the API tells nothing of what exists on the host.</summary>
    private ImageProblem Outside(int index) =>
        new(index, $"disk {index}: its image, or a file of its backing chain, is outside every storage pool or cannot be read by {_confinement?.User.Name ?? _options.User}");

    internal static string FormatName(DiskFormat f) => f == DiskFormat.Qcow2 ? "qcow2" : "raw";

    private static string? FindQemuImg(QemuOptions options)
    {
        if (options.ImgBinary is { } configured) return File.Exists(configured) ? configured : null;
        if (options.Binary is { } qemu && Path.GetDirectoryName(qemu) is { } beside && File.Exists(Path.Combine(beside, "qemu-img"))) return Path.Combine(beside, "qemu-img");
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, "qemu-img");
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}
