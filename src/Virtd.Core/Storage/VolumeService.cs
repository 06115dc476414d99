using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;
using Virtd.Core.Persistence;

namespace Virtd.Core.Storage;

/// <summary>A pool as listed: its name, directory, and the filesystem's size and free space under it.</summary>
public sealed record PoolInfo(string Name, string Path, long Capacity, long Free);

/// <summary>A volume as listed. <c>Problem</c> says why its image could not be read (its other figures are then the file's).</summary>
public sealed record VolumeInfo(string Pool, string Name, string Volume, DiskFormat Format, long VirtualSize, long Allocation,
    string? BackingVolume, IReadOnlyList<string> UsedBy, string? Problem = null);

/// <summary>
/// Storage pools and their volumes (libvirt's dir pools): a volume is a file directly in a pool's directory. Its format
/// is the one it was created or uploaded with, kept in <c>&lt;StateDirectory&gt;/volumes.json</c>, so no image header
/// (which a guest may have written) ever decides it; a file put in a pool by hand is qcow2 when its name ends in
/// <c>.qcow2</c> and raw otherwise. Changes to one volume never wait for another: a volume being changed is busy
/// (409 <c>volume-busy</c>) rather than waited for. New content is written beside the volume under a name no volume
/// can have (a leading dot), synced, checked, then renamed over it, so a crash leaves the old volume or the new one.
/// </summary>
public sealed class VolumeService : IAsyncDisposable
{
    /// <summary>Temporary files in pools start with this; volumes never do.</summary>
    public const string TemporaryPrefix = ".virtd-";

    private const int CopyBuffer = 1 << 16;

    private readonly StoragePaths _paths;
    private readonly StorageOptions _options;
    private readonly DomainRegistry _registry;
    private readonly IVolumeTool? _tool;
    private readonly TimeProvider _time;
    private readonly ILogger<VolumeService> _log;
    private readonly string _formatsFile;
    private readonly Lock _formatsLock = new();
    private Dictionary<string, DiskFormat> _formats;
    private readonly ConcurrentDictionary<string, string> _busy = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<Guid, VolumeJob> _jobs = new();
    private readonly CancellationTokenSource _stopping = new();

    public VolumeService(StoragePaths paths, StorageOptions options, VirtdOptions virtd, DomainRegistry registry, TimeProvider time,
        ILogger<VolumeService> log, IVolumeTool? tool = null)
    {
        _paths = paths;
        _options = options;
        _registry = registry;
        _tool = tool;
        _time = time;
        _log = log;
        _formatsFile = Path.Combine(virtd.StateDirectory, "volumes.json");
        _formats = LoadFormats();
    }

    public IReadOnlyList<PoolInfo> Pools() =>
        _paths.Named.OrderBy(p => p.Name, StringComparer.Ordinal).Select(Describe).ToList();

    public PoolInfo Pool(string name) => Describe(RequirePool(name));

    private static PoolInfo Describe(StoragePool pool)
    {
        var (capacity, free) = FileSystemSpace.Of(pool.RealPath);
        return new PoolInfo(pool.Name, pool.Path, capacity, free);
    }

    /// <summary>The format a volume's image has: as recorded, else by its name.</summary>
    public DiskFormat FormatOf(VolumeRef volume)
    {
        lock (_formatsLock)
            if (_formats.TryGetValue(volume.ToString(), out var f)) return f;
        return volume.Name.EndsWith(".qcow2", StringComparison.OrdinalIgnoreCase) ? DiskFormat.Qcow2 : DiskFormat.Raw;
    }

    /// <summary>The pool's volumes, by name.</summary>
    public async Task<IReadOnlyList<VolumeInfo>> ListAsync(string pool, CancellationToken ct)
    {
        var p = RequirePool(pool);
        var users = Users();
        var list = new List<VolumeInfo>();
        foreach (var name in Files(p))
            list.Add(await DescribeAsync(new VolumeRef(p.Name, name), users, ct).ConfigureAwait(false));
        return list;
    }

    public async Task<VolumeInfo> GetAsync(string pool, string name, CancellationToken ct)
    {
        var v = RequireVolume(pool, name);
        return await DescribeAsync(v, Users(), ct).ConfigureAwait(false);
    }

    /// <summary>Creates an empty volume, or a copy-on-write clone of <paramref name="backing"/>.</summary>
    public async Task<VolumeInfo> CreateAsync(string pool, string name, DiskFormat? format, long? capacity, string? backing, CancellationToken ct)
    {
        var p = RequirePool(pool);
        var target = NewName(p, name);
        VolumeRef? backingRef = null;
        if (backing is not null)
        {
            backingRef = RequireVolumeField("backingVolume", backing);
            format ??= DiskFormat.Qcow2;
            if (format != DiskFormat.Qcow2) throw VirtdException.Validation("format", "must be qcow2 for a clone: only qcow2 images have a backing file");
        }
        else if (capacity is null) throw VirtdException.Validation("capacity", "is required (bytes, or a string like \"10GiB\")");
        var fmt = format ?? DiskFormat.Raw;
        if (fmt == DiskFormat.Qcow2 || backingRef is not null) RequireTool();

        using var hold = Hold(target, "being created");
        var path = Path.Combine(p.Path, target.Name);
        var temporary = Temporary(p, "new");
        try
        {
            if (backingRef is { } b)
            {
                var backingPath = _paths.VolumePath(b)!;
                var backingFormat = FormatOf(b);
                if (await _tool!.CheckChainAsync(backingPath, backingFormat, ct).ConfigureAwait(false) is { } problem)
                    throw VirtdException.Validation("backingVolume", problem);
                var size = capacity ?? (await _tool.InfoAsync(backingPath, backingFormat, ct).ConfigureAwait(false)).VirtualSize;
                // Written relative (the name alone) when the backing volume shares the pool, so a pool can move.
                var reference = b.Pool == p.Name ? b.Name : (StoragePaths.TryRealPath(backingPath) ?? backingPath);
                await _tool.CreateAsync(temporary, fmt, size, reference, backingFormat, ct).ConfigureAwait(false);
            }
            else if (fmt == DiskFormat.Raw && (_tool is null || _tool.Problem is not null))
            {
                using var fs = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.None);
                fs.SetLength(capacity!.Value);
            }
            else await _tool!.CreateAsync(temporary, fmt, capacity!.Value, null, null, ct).ConfigureAwait(false);
            Publish(temporary, path, target, fmt, replace: false);
        }
        finally { AtomicFile.Delete(temporary); }
        return await DescribeAsync(target, Users(), ct).ConfigureAwait(false);
    }

    /// <summary>Queues a full copy of <paramref name="from"/> into a new volume; the job reports its progress.</summary>
    public VolumeJob StartCopy(string pool, string name, DiskFormat? format, string from)
    {
        var p = RequirePool(pool);
        var target = NewName(p, name);
        var source = RequireVolumeField("from", from);
        RequireTool();
        var sourceFormat = FormatOf(source);
        var fmt = format ?? sourceFormat;
        var hold = Hold(target, "being copied into");
        var job = new VolumeJob(target, source, _time.GetUtcNow());
        try
        {
            _jobs[job.Id] = job;
            PruneJobs();
            job.Run = Task.Run(() => CopyAsync(job, p, sourceFormat, fmt, hold));
        }
        catch
        {
            hold.Dispose();
            throw;
        }
        return job;
    }

    private async Task CopyAsync(VolumeJob job, StoragePool pool, DiskFormat sourceFormat, DiskFormat format, IDisposable hold)
    {
        using var _ = hold;
        var temporary = Temporary(pool, "copy");
        try
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token, job.Cancellation.Token);
            job.Started(_time.GetUtcNow());
            var sourcePath = _paths.VolumePath(job.Source)!;
            if (await _tool!.CheckChainAsync(sourcePath, sourceFormat, cts.Token).ConfigureAwait(false) is { } problem)
                throw VirtdException.Validation("from", problem);
            await _tool.CopyAsync(sourcePath, sourceFormat, temporary, format, job.Report, cts.Token).ConfigureAwait(false);
            Publish(temporary, Path.Combine(pool.Path, job.Target.Name), job.Target, format, replace: false);
            job.Finish(JobState.Succeeded, null, _time.GetUtcNow());
        }
        catch (OperationCanceledException)
        {
            job.Finish(JobState.Cancelled, JobError.Of(ErrorCodes.Cancelled, "Cancelled",
                409, job.Cancellation.IsCancellationRequested ? "the copy was cancelled by request" : "the daemon stopped during the copy"), _time.GetUtcNow());
        }
        catch (VirtdException e)
        {
            job.Finish(JobState.Failed, JobError.From(e), _time.GetUtcNow());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.LogWarning(e, "copy into volume {Volume} failed", job.Target);
            job.Finish(JobState.Failed, JobError.Of(ErrorCodes.HypervisorError, "Copy failed", 500, $"the copy into {job.Target} failed: {e.Message}"), _time.GetUtcNow());
        }
        finally { AtomicFile.Delete(temporary); }
    }

    public VolumeJob? FindJob(Guid id) => _jobs.GetValueOrDefault(id);

    public IEnumerable<VolumeJob> Jobs() => _jobs.Values;

    /// <summary>
    /// Writes <paramref name="content"/> as the volume's image, creating the volume or replacing its content (not while
    /// a running domain uses it). Streamed to disk in small pieces; more than <c>Storage:MaxUploadBytes</c> is 413 and
    /// leaves nothing behind. The format is the one given, else what qemu-img recognises; either way the whole chain
    /// must pass the same check as a disk's.
    /// </summary>
    public async Task<(VolumeInfo Volume, bool Created)> UploadAsync(string pool, string name, DiskFormat? format, Stream content, long? length, CancellationToken ct)
    {
        var p = RequirePool(pool);
        if (VolumeNames.Problem(name) is { } bad) throw VirtdException.Validation("name", bad);
        var target = new VolumeRef(p.Name, name);
        if (length > _options.MaxUploadBytes) throw TooLarge();
        using var hold = Hold(target, "being written");
        var path = Path.Combine(p.Path, name);
        var exists = File.Exists(path);
        if (exists && RunningUsers(target, StoragePaths.TryRealPath(path)) is { Count: > 0 } running)
            throw InUse(target, $"running domain{(running.Count > 1 ? "s" : "")} {string.Join(", ", running)} use{(running.Count > 1 ? "" : "s")} it; stop {(running.Count > 1 ? "them" : "it")} first");
        var temporary = Temporary(p, "upload");
        try
        {
            await using (var fs = new FileStream(temporary, new FileStreamOptions
            {
                Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None, BufferSize = 0,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            }))
            {
                var buffer = new byte[CopyBuffer];
                long total = 0;
                int n;
                while ((n = await content.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
                {
                    total += n;
                    if (total > _options.MaxUploadBytes) throw TooLarge();
                    await fs.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                }
                fs.Flush(flushToDisk: true);
            }
            _tool?.Adopt(temporary);
            var fmt = format ?? await ProbeAsync(temporary, ct).ConfigureAwait(false);
            if (fmt == DiskFormat.Qcow2)
            {
                RequireTool();
                if (await _tool!.CheckChainAsync(temporary, fmt, ct).ConfigureAwait(false) is { } problem)
                    throw VirtdException.Validation("content", problem);
            }
            Publish(temporary, path, target, fmt, replace: true);
        }
        finally { AtomicFile.Delete(temporary); }
        return (await DescribeAsync(target, Users(), ct).ConfigureAwait(false), !exists);
    }

    private async Task<DiskFormat> ProbeAsync(string path, CancellationToken ct)
    {
        if (_tool?.Problem is not null || _tool is null)
            throw VirtdException.Validation("format", "is required here: qemu-img, which would recognise the image, is not installed");
        var found = await _tool.ProbeAsync(path, ct).ConfigureAwait(false);
        return found switch
        {
            "raw" => DiskFormat.Raw,
            "qcow2" => DiskFormat.Qcow2,
            _ => throw VirtdException.Validation("content", $"is a {found} image; virtd takes raw and qcow2 (convert it with qemu-img convert -O qcow2)"),
        };
    }

    /// <summary>The volume's file, opened for reading (a download).</summary>
    public FileStream OpenRead(string pool, string name)
    {
        var v = RequireVolume(pool, name);
        try { return new FileStream(_paths.VolumePath(v)!, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.Asynchronous | FileOptions.SequentialScan); }
        catch (FileNotFoundException) { throw NotFound(v); }
    }

    /// <summary>Sets the volume's virtual size: larger, or smaller with <paramref name="shrink"/>; not while a running domain uses it.</summary>
    public async Task<VolumeInfo> ResizeAsync(string pool, string name, long capacity, bool shrink, CancellationToken ct)
    {
        var v = RequireVolume(pool, name);
        using var hold = Hold(v, "being resized");
        var path = _paths.VolumePath(v)!;
        if (RunningUsers(v, StoragePaths.TryRealPath(path)) is { Count: > 0 } running)
            throw InUse(v, $"running domain{(running.Count > 1 ? "s" : "")} {string.Join(", ", running)} use{(running.Count > 1 ? "" : "s")} it; stop {(running.Count > 1 ? "them" : "it")} first");
        var format = FormatOf(v);
        var current = await FactsAsync(path, format, ct).ConfigureAwait(false);
        if (capacity < current.VirtualSize && !shrink)
            throw VirtdException.Validation("capacity", $"is smaller than the volume's {current.VirtualSize} bytes; give \"shrink\": true to shrink it (what lies beyond is lost)");
        if (capacity != current.VirtualSize)
        {
            if (format == DiskFormat.Raw && (_tool is null || _tool.Problem is not null))
            {
                using var fs = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
                fs.SetLength(capacity);
                fs.Flush(flushToDisk: true);
            }
            else
            {
                RequireTool();
                await _tool!.ResizeAsync(path, format, capacity, shrink, ct).ConfigureAwait(false);
            }
        }
        return await DescribeAsync(v, Users(), ct).ConfigureAwait(false);
    }

    /// <summary>Deletes the volume: 409 <c>volume-in-use</c> while a domain's definition names it or another volume is backed by it.</summary>
    public async Task DeleteAsync(string pool, string name, CancellationToken ct)
    {
        var v = RequireVolume(pool, name);
        using var hold = Hold(v, "being deleted");
        var path = _paths.VolumePath(v)!;
        var real = StoragePaths.TryRealPath(path);
        var users = Users().Where(u => u.Uses(v, real)).Select(u => u.Domain).Distinct().Order(StringComparer.Ordinal).ToList();
        if (users.Count > 0)
            throw InUse(v, $"domain{(users.Count > 1 ? "s" : "")} {string.Join(", ", users)} use{(users.Count > 1 ? "" : "s")} it; remove it from {(users.Count > 1 ? "their definitions" : "its definition")} or undefine {(users.Count > 1 ? "them" : "it")} first");
        foreach (var other in _paths.Named)
        {
            foreach (var file in Files(other))
            {
                var o = new VolumeRef(other.Name, file);
                if (o == v || FormatOf(o) != DiskFormat.Qcow2 || _tool is null || _tool.Problem is not null) continue;
                ImageFacts facts;
                try { facts = await _tool.InfoAsync(Path.Combine(other.Path, file), DiskFormat.Qcow2, ct).ConfigureAwait(false); }
                catch (VirtdException) { continue; }
                if (facts.BackingFile is { } b && real is not null && StoragePaths.TryRealPath(b) == real)
                    throw InUse(v, $"volume {o} is a clone of it (its backing volume); delete that one first");
            }
        }
        try { File.Delete(path); }
        catch (DirectoryNotFoundException) { throw NotFound(v); }
        AtomicFile.SyncDirectory(Path.GetDirectoryName(path)!);
        lock (_formatsLock)
        {
            if (_formats.Remove(v.ToString())) SaveFormats();
        }
    }

    /// <summary>Removes what a crash left in the pools: temporary files of uploads, creations and copies (at start).</summary>
    public void RemoveLeftovers()
    {
        foreach (var pool in _paths.Named.DistinctBy(p => p.RealPath))
        {
            try
            {
                foreach (var file in Directory.EnumerateFiles(pool.RealPath, TemporaryPrefix + "*"))
                {
                    _log.LogInformation("removing {File}, left in pool {Pool} by an earlier run", Path.GetFileName(file), pool.Name);
                    AtomicFile.Delete(file);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stopping.Cancel();
        foreach (var job in _jobs.Values)
        {
            if (job.Run is { } run)
            {
                try { await run.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false); }
                catch (TimeoutException) { _log.LogWarning("copy into {Volume} did not stop within 30 s", job.Target); }
            }
        }
        _stopping.Dispose();
    }

    // ---- parts ----

    private async Task<VolumeInfo> DescribeAsync(VolumeRef v, IReadOnlyList<DiskUse> users, CancellationToken ct)
    {
        var path = _paths.VolumePath(v)!;
        var real = StoragePaths.TryRealPath(path);
        var format = FormatOf(v);
        var usedBy = users.Where(u => u.Uses(v, real)).Select(u => u.Domain).Distinct().Order(StringComparer.Ordinal).ToList();
        var length = new FileInfo(path) is { Exists: true } fi ? fi.Length : throw NotFound(v);
        try
        {
            var facts = await FactsAsync(path, format, ct).ConfigureAwait(false);
            string? backing = null;
            string? problem = null;
            if (facts.BackingFile is { } b)
            {
                var backingReal = StoragePaths.TryRealPath(b.StartsWith('/') ? b : Path.Combine(Path.GetDirectoryName(real ?? path)!, b));
                if (backingReal is not null && _paths.VolumeOf(backingReal) is { } bv) backing = bv.ToString();
                else problem = "its backing file is not a volume of any pool";
            }
            return new VolumeInfo(v.Pool, v.Name, v.ToString(), format, facts.VirtualSize, facts.Allocation, backing, usedBy, problem);
        }
        catch (VirtdException e) when (e.Status != 404)
        {
            return new VolumeInfo(v.Pool, v.Name, v.ToString(), format, length, length, null, usedBy, e.Detail);
        }
    }

    private async Task<ImageFacts> FactsAsync(string path, DiskFormat format, CancellationToken ct)
    {
        if (_tool is { Problem: null }) return await _tool.InfoAsync(path, format, ct).ConfigureAwait(false);
        if (format != DiskFormat.Raw) throw new VirtdException(ErrorCodes.HypervisorUnavailable, 409, "qemu-img unavailable", _tool?.Problem ?? "qemu-img is not installed");
        var length = new FileInfo(path).Length;
        return new ImageFacts(length, length, null);
    }

    /// <summary>Every disk, kernel and initrd of every domain's definition: who uses which file.</summary>
    private List<DiskUse> Users()
    {
        var uses = new List<DiskUse>();
        foreach (var d in _registry.List())
        {
            var def = d.Definition;
            var running = d.Runtime.IsActive || d.Instance is not null;
            foreach (var disk in def.Disks)
            {
                if (disk.Volume is not null) uses.Add(new DiskUse(d.Name, running, disk.Volume, null));
                else uses.Add(new DiskUse(d.Name, running, null, StoragePaths.TryRealPath(disk.Path)));
            }
            if (def.Boot?.Kernel is { } k) uses.Add(new DiskUse(d.Name, running, null, StoragePaths.TryRealPath(k)));
            if (def.Boot?.Initrd is { } i) uses.Add(new DiskUse(d.Name, running, null, StoragePaths.TryRealPath(i)));
        }
        return uses;
    }

    private List<string> RunningUsers(VolumeRef v, string? real) =>
        Users().Where(u => u.Running && u.Uses(v, real)).Select(u => u.Domain).Distinct().Order(StringComparer.Ordinal).ToList();

    /// <summary>One file a domain's definition names: a volume, or a path as resolved when the list was made.</summary>
    private sealed record DiskUse(string Domain, bool Running, string? Volume, string? RealPath)
    {
        public bool Uses(VolumeRef v, string? real) =>
            Volume is not null ? Volume == v.ToString() : real is not null && RealPath == real;
    }

    private static IEnumerable<string> Files(StoragePool pool)
    {
        if (!Directory.Exists(pool.RealPath)) return [];
        return new DirectoryInfo(pool.RealPath).EnumerateFiles()
            .Where(f => (f.Attributes & FileAttributes.ReparsePoint) == 0 && VolumeNames.IsValid(f.Name))
            .Select(f => f.Name).Order(StringComparer.Ordinal).ToList();
    }

    private StoragePool RequirePool(string name) =>
        _paths.Pool(name) ?? throw new VirtdException(ErrorCodes.PoolNotFound, 404, "Pool not found",
            $"no pool named '{name}' (pools: {string.Join(", ", _paths.Named.Select(p => p.Name).Order(StringComparer.Ordinal))})");

    private VolumeRef RequireVolume(string pool, string name)
    {
        var p = RequirePool(pool);
        var v = new VolumeRef(p.Name, name);
        if (!VolumeNames.IsValid(name) || !File.Exists(Path.Combine(p.Path, name)) || IsLink(Path.Combine(p.Path, name))) throw NotFound(v);
        return v;
    }

    private VolumeRef RequireVolumeField(string field, string text)
    {
        if (!VolumeRef.TryParse(text, out var v, out var problem)) throw VirtdException.Validation(field, problem!);
        if (_paths.CheckVolume(text) is { } missing) throw VirtdException.Validation(field, missing);
        return v;
    }

    private VolumeRef NewName(StoragePool pool, string name)
    {
        if (VolumeNames.Problem(name) is { } bad) throw VirtdException.Validation("name", bad);
        var v = new VolumeRef(pool.Name, name);
        if (File.Exists(Path.Combine(pool.Path, name)) || Directory.Exists(Path.Combine(pool.Path, name)) || IsLink(Path.Combine(pool.Path, name)))
            throw new VirtdException(ErrorCodes.VolumeExists, 409, "Volume exists", $"volume {v} already exists");
        return v;
    }

    private static bool IsLink(string path)
    {
        try { return new FileInfo(path).LinkTarget is not null; }
        catch (IOException) { return false; }
    }

    private void RequireTool()
    {
        if (_tool is null || _tool.Problem is not null)
            throw new VirtdException(ErrorCodes.HypervisorUnavailable, 409, "qemu-img unavailable",
                _tool?.Problem ?? "qemu-img (Debian package qemu-utils) is not installed; only raw volumes can be made without it");
    }

    private static string Temporary(StoragePool pool, string what) => Path.Combine(pool.Path, $"{TemporaryPrefix}{what}-{Guid.NewGuid():N}");

    /// <summary>Moves finished content into place (synced, owned and moded as volumes are) and records its format.</summary>
    private void Publish(string temporary, string path, VolumeRef volume, DiskFormat format, bool replace)
    {
        _tool?.Adopt(temporary);
        using (var fs = new FileStream(temporary, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite)) fs.Flush(flushToDisk: true);
        lock (_formatsLock)
        {
            _formats[volume.ToString()] = format;
            SaveFormats();
        }
        try { File.Move(temporary, path, overwrite: replace); }
        catch (IOException) when (!replace && File.Exists(path))
        {
            throw new VirtdException(ErrorCodes.VolumeExists, 409, "Volume exists", $"volume {volume} already exists");
        }
        AtomicFile.SyncDirectory(Path.GetDirectoryName(path)!);
    }

    private Hold Hold(VolumeRef v, string doing)
    {
        var key = v.ToString();
        if (!_busy.TryAdd(key, doing))
            throw new VirtdException(ErrorCodes.VolumeBusy, 409, "Volume busy", $"volume {v} is {_busy.GetValueOrDefault(key) ?? "busy"}; try again when that is done") { RetryAfterSeconds = 1 };
        return new Hold(() => _busy.TryRemove(key, out _));
    }

    private void PruneJobs()
    {
        var finished = _jobs.Values.Where(j => j.IsFinished).OrderBy(j => j.FinishedAt).ToList();
        foreach (var j in finished.Take(Math.Max(0, finished.Count - 1000))) _jobs.TryRemove(j.Id, out _);
    }

    private VirtdException TooLarge() =>
        new(ErrorCodes.PayloadTooLarge, 413, "Payload too large", $"the image is larger than Storage:MaxUploadBytes ({_options.MaxUploadBytes} bytes)");

    private static VirtdException NotFound(VolumeRef v) =>
        new(ErrorCodes.VolumeNotFound, 404, "Volume not found", $"no volume '{v.Name}' in pool '{v.Pool}'");

    private static VirtdException InUse(VolumeRef v, string why) =>
        new(ErrorCodes.VolumeInUse, 409, "Volume in use", $"volume {v} is in use: {why}");

    private Dictionary<string, DiskFormat> LoadFormats()
    {
        try
        {
            var bytes = File.ReadAllBytes(_formatsFile);
            return JsonSerializer.Deserialize(bytes, VolumeJson.Default.VolumeFormatsFile)?.Formats ?? new(StringComparer.Ordinal);
        }
        catch (FileNotFoundException) { }
        catch (DirectoryNotFoundException) { }
        catch (JsonException e)
        {
            // Kept aside, not lost: the formats it held fall back to the names' (.qcow2 or raw) until recorded again.
            var aside = $"{_formatsFile}.bad-{_time.GetUtcNow():yyyyMMddHHmmss}";
            _log.LogError("{File} is not valid JSON ({Error}); moved to {Aside}", _formatsFile, e.Message, aside);
            try { File.Move(_formatsFile, aside); } catch (IOException) { }
        }
        return new(StringComparer.Ordinal);
    }

    private void SaveFormats() =>
        AtomicFile.Write(_formatsFile, JsonSerializer.SerializeToUtf8Bytes(new VolumeFormatsFile(new(_formats, StringComparer.Ordinal)), VolumeJson.Default.VolumeFormatsFile),
            mode: UnixFileMode.UserRead | UnixFileMode.UserWrite);
}

/// <summary>Disposing it runs the action once.</summary>
internal sealed class Hold(Action release) : IDisposable
{
    private int _done;
    public void Dispose() { if (Interlocked.Exchange(ref _done, 1) == 0) release(); }
}

/// <summary>A full copy into a new volume, run in the background, read through <c>GET /api/v1/jobs/{id}</c>.</summary>
public sealed class VolumeJob(VolumeRef target, VolumeRef source, DateTimeOffset createdAt)
{
    private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private JobStatus _status = new(JobState.Queued, null, null, null, null);
    private double _progress;

    public Guid Id { get; } = Guid.CreateVersion7(createdAt);
    public VolumeRef Target { get; } = target;
    public VolumeRef Source { get; } = source;
    public DateTimeOffset CreatedAt { get; } = createdAt;
    public JobStatus Status => Volatile.Read(ref _status);
    public bool IsFinished => Status.IsFinished;
    public DateTimeOffset? FinishedAt => Status.FinishedAt;
    /// <summary>Percent done, 0–100.</summary>
    public double Progress => Volatile.Read(ref _progress);
    public Task Finished => _finished.Task;
    internal CancellationTokenSource Cancellation { get; } = new();
    internal Task? Run { get; set; }

    /// <summary>Asks the copy to stop; false once it has finished.</summary>
    public bool Cancel()
    {
        if (IsFinished) return false;
        try { Cancellation.Cancel(); } catch (ObjectDisposedException) { return false; }
        return true;
    }

    internal void Started(DateTimeOffset now) => Volatile.Write(ref _status, Status with { State = JobState.Running, StartedAt = now });

    internal void Report(double percent) => Volatile.Write(ref _progress, Math.Clamp(percent, 0, 100));

    internal void Finish(JobState state, JobError? error, DateTimeOffset now)
    {
        if (state == JobState.Succeeded) Report(100);
        Volatile.Write(ref _status, Status with { State = state, FinishedAt = now, StartedAt = Status.StartedAt ?? now, Error = error });
        _finished.TrySetResult();
    }
}

internal sealed record VolumeFormatsFile(Dictionary<string, DiskFormat> Formats);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, UseStringEnumConverter = true, WriteIndented = true)]
[JsonSerializable(typeof(VolumeFormatsFile))]
internal sealed partial class VolumeJson : JsonSerializerContext;
