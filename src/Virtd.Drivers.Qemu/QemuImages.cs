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
public sealed class QemuImages : IImageChecker
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
        var top = _pools.Resolve(disk.Path) ?? throw Outside(index);
        var key = (top, disk.Format);
        if (_cache.TryGetValue(key, out var known) && known.Layers.All(l => Users.Identify(l.Path) == l.Identity)) return known;
        if (_problem is not null) throw new ImageProblem(index, $"disk {index}: {_problem}");
        if (_confinement is null) throw new ImageProblem(index, $"disk {index}: the QEMU driver is not ready yet");
        var chain = await ReadChainAsync(top, disk.Format, index, cancellationToken).ConfigureAwait(false);
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
        var psi = new ProcessStartInfo(_confinement!.Prefix[0])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = "/",
        };
        foreach (var a in _confinement.Prefix.Skip(1)) psi.ArgumentList.Add(a);
        foreach (var a in command) psi.ArgumentList.Add(a);
        psi.Environment.Clear();
        foreach (var kv in QemuCommandLine.Environment) psi.Environment[kv[..kv.IndexOf('=')]] = kv[(kv.IndexOf('=') + 1)..];

        using var process = Process.Start(psi) ?? throw new ImageProblem(index, $"disk {index}: qemu-img could not be started");
        var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.ImageTimeout);
        try
        {
            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            if (cancellationToken.IsCancellationRequested) throw;
            _log.LogWarning("disk {Disk}: qemu-img did not answer within {Seconds} s; killed", index, _options.ImageTimeout.TotalSeconds);
            throw new ImageProblem(index, $"disk {index}: qemu-img did not finish reading the image within {_options.ImageTimeout.TotalSeconds:0.###} s (Qemu:ImageTimeout)");
        }
        return (process.ExitCode == 0, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }

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
