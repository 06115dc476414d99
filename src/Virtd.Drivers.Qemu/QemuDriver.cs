using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Drivers.Qemu.Native;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// Runs domains as real QEMU processes spoken to over QMP. QEMU is a direct child in a session of its
/// own, so it outlives the daemon; a status file per running domain lets the next daemon take it back.
/// </summary>
public sealed class QemuDriver : IHypervisorDriver
{
    private readonly VirtdOptions _virtd;
    private readonly ILogger<QemuDriver> _log;
    private readonly ConcurrentDictionary<QemuVm, byte> _vms = new();
    private readonly List<Task> _detaching = [];
    private readonly string? _binary;
    private readonly string? _binaryProblem;
    private QemuCapabilities? _caps;
    private string? _probeProblem;
    private ExitWatcher? _watcher;
    private string _accel = "tcg";

    private readonly QemuImages _images;
    private readonly StoragePaths _pools;
    private QemuConfinement? _confinement;
    private string? _confinementProblem;
    private VmCgroups? _cgroups;

    public QemuDriver(QemuOptions options, VirtdOptions virtd, QemuImages images, StoragePaths pools, TimeProvider time, ILogger<QemuDriver> log,
        Core.Observability.VirtdMetrics? metrics = null)
    {
        Metrics = metrics ?? Core.Observability.VirtdMetrics.None;
        Options = options;
        _images = images;
        _pools = pools;
        _virtd = virtd;
        Time = time;
        _log = log;
        (_binary, _binaryProblem) = QemuDiscovery.FindBinary(options.Binary);
    }

    public DriverKind Kind => DriverKind.Qemu;

    internal QemuOptions Options { get; }
    internal TimeProvider Time { get; }
    internal Core.Observability.VirtdMetrics Metrics { get; }

    public string LogDirectory => Path.Combine(_virtd.StateDirectory, "log");

    /// <summary>What the QEMU binary answered when it was last probed, with its identity (see <see cref="QemuDiscovery.ProbeAsync"/>).</summary>
    public string CapabilitiesCache => Path.Combine(_virtd.StateDirectory, "cache", "qemu-capabilities.json");

    public HypervisorInfo Info
    {
        get
        {
            var problem = _binaryProblem ?? _confinementProblem ?? _probeProblem;
            var detail = problem ?? (_caps is null ? "QEMU found; not probed yet" : $"QEMU {_caps.Version}{(_caps.Package is { } p ? $" ({p})" : "")}");
            return new HypervisorInfo(DriverKind.Qemu, problem is null, _caps?.Version, detail, _vms.Count)
            {
                Binary = _binary,
                Accelerator = _binary is null ? null : _accel,
                Machines = _caps?.Machines.Where(m => m is "q35" or "pc").ToList(), // the machine types a definition can name
                Sandbox = _caps is null ? null : _caps.Sandbox && Options.Sandbox,
                Confinement = _confinement is null ? null
                    : new Confinement(_confinement.User.Name, NoNewPrivs: true, Sandbox: _caps is not null && _caps.Sandbox && Options.Sandbox,
                        _cgroups?.Status ?? "not set up yet"),
            };
        }
    }

    public async Task InitializeAsync(IReadOnlyList<DomainObject> domains, IVmHost host, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(LogDirectory);
        Directory.CreateDirectory(_virtd.RunDirectory);
        _watcher = new ExitWatcher(_log);
        _accel = QemuDiscovery.ChooseAccelerator(Options.Accel);
        (_confinement, _confinementProblem) = QemuConfinement.Resolve(Options, _log);
        _images.UseConfinement(_confinement, _confinementProblem);
        if (_confinementProblem is not null) _log.LogError("QEMU driver unavailable: {Problem}", _confinementProblem);
        else _log.LogInformation("QEMU runs as {User} (uid {Uid}) with no_new_privs{Caps}", _confinement!.User.Name, _confinement.User.Uid,
            _confinement.SwitchUser ? ", no capabilities and no supplementary groups" : "");
        _cgroups = VmCgroups.Setup("/proc/self/mountinfo", "/proc/self/cgroup", Environment.ProcessId, _log);
        // First take back what the previous daemon left running (from files, at once; even when QEMU itself is
        // gone now), so those VMs are watched while QEMU is probed.
        Readopt(domains, host);
        if (_binary is not null)
        {
            var sw = Stopwatch.StartNew();
            using var probeTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            probeTimeout.CancelAfter(TimeSpan.FromSeconds(10));
            try
            {
                _caps = await QemuDiscovery.ProbeAsync(_binary, CapabilitiesCache, probeTimeout.Token).ConfigureAwait(false);
                _log.LogInformation("QEMU {Version} at {Binary}: accel {Accel}, sandbox {Sandbox}, probed in {Ms:0} ms",
                    _caps.Version, _binary, _accel, _caps.Sandbox, sw.Elapsed.TotalMilliseconds);
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or System.ComponentModel.Win32Exception or InvalidOperationException)
            {
                _probeProblem = $"QEMU at {_binary} could not be probed: {e.Message}";
                _log.LogError("{Problem}", _probeProblem);
            }
        }
        else
        {
            _log.LogWarning("QEMU driver unavailable: {Problem}", _binaryProblem);
        }
    }

    private void Readopt(IReadOnlyList<DomainObject> domains, IVmHost host)
    {
        var known = new HashSet<string>(StringComparer.Ordinal);
        foreach (var d in domains.Where(d => d.Driver == DriverKind.Qemu))
        {
            var paths = PathsFor(d.Uuid);
            known.Add(Path.GetFileName(paths.Status));
            known.Add(Path.GetFileName(paths.Monitor));
            known.Add(Path.GetFileName(paths.Serial));
            if (!File.Exists(paths.Status))
            {
                DeleteQuietly(paths.Monitor);
                DeleteQuietly(paths.Serial);
                continue;
            }
            var (status, problem) = QemuStatusFile.TryRead(paths.Status);
            if (status is null || status.Uuid != d.Uuid)
            {
                _log.LogWarning("domain {Domain}: unusable status file {Path} ({Problem}); treating the domain as shut off", d.Name, paths.Status, problem ?? "another UUID");
                Forget(paths, d, host);
                continue;
            }
            PidfdHandle? pidfd = null;
            if (status.Matches(status.Pid)) pidfd = Linux.OpenPidfd(status.Pid);
            // Checked again once the pidfd is held: the pid cannot be reused from here on.
            if (pidfd is null || !status.Matches(status.Pid))
            {
                pidfd?.Dispose();
                _log.LogInformation("domain {Domain}: QEMU pid {Pid} is gone; shut off (daemon-down)", d.Name, status.Pid);
                QemuLog.Append(paths.Log, $"QEMU pid {status.Pid} ended while no daemon watched it");
                Forget(paths, d, host);
                continue;
            }
            var vm = new QemuVm(this, d.Name, status.Definition, paths, status.Pid, pidfd, QemuLog.Length(paths.Log), isChild: false,
                sink: null, _log);
            _vms[vm] = 0;
            vm.Watch(_watcher!.WatchAsync(pidfd));
            vm.SetSink(host.Adopt(d, vm, status.Definition, DomainState.Running, StateReasons.Reconnecting, status.StartedAt));
            vm.StartReconnect();
        }
        // Files of domains that no longer exist: keep those of a live process (logged), remove the rest.
        foreach (var file in Directory.EnumerateFiles(_virtd.RunDirectory))
        {
            var name = Path.GetFileName(file);
            if (known.Contains(name) || !(name.EndsWith(".qmp", StringComparison.Ordinal) || name.EndsWith(".serial", StringComparison.Ordinal)
                    || name.EndsWith(".status.json", StringComparison.Ordinal))) continue;
            var statusPath = name.EndsWith(".status.json", StringComparison.Ordinal) ? file : file[..file.LastIndexOf('.')] + ".status.json";
            if (QemuStatusFile.TryRead(statusPath).Status is { } orphan && orphan.Matches(orphan.Pid))
            {
                _log.LogWarning("QEMU pid {Pid} runs for '{Name}' ({Uuid}), which is not defined; left alone", orphan.Pid, orphan.Name, orphan.Uuid);
                continue;
            }
            DeleteQuietly(file);
        }
    }

    private void Forget(QemuPaths paths, DomainObject d, IVmHost host)
    {
        DeleteQuietly(paths.Status);
        DeleteQuietly(paths.Monitor);
        DeleteQuietly(paths.Serial);
        host.MarkStopped(d, StateReasons.DaemonDown);
    }

    public QemuPaths PathsFor(Guid uuid) => QemuPaths.For(_virtd.RunDirectory, LogDirectory, uuid);

    public string? ConsoleLogPath(Guid uuid) => PathsFor(uuid).Console;

    public async Task<IVmInstance> LaunchAsync(DomainObject domain, DomainDefinition definition, IVmEventSink sink, CancellationToken cancellationToken)
    {
        if (_binary is null || _caps is null || _watcher is null || _confinement is null)
            throw new VirtdException(ErrorCodes.HypervisorUnavailable, 409, "Hypervisor unavailable", Info.Detail ?? "QEMU is not available");
        if (Options.Sandbox && !_caps.Sandbox)
            throw VirtdException.HypervisorError($"this QEMU ({_caps.Version}) cannot run guests under its seccomp sandbox, and Qemu:Sandbox is true: " +
                "domain '" + domain.Name + "' is not started unconfined (set Qemu:Sandbox=false to allow that)");
        var uuid = domain.Uuid;
        var paths = PathsFor(uuid);

        // Every disk's chain is checked (again, if any of its files changed) before anything is opened for QEMU.
        var chains = new List<ImageChain>(definition.Disks.Count);
        for (var i = 0; i < definition.Disks.Count; i++)
        {
            try { chains.Add(await _images.InspectAsync(definition.Disks[i], i, cancellationToken).ConfigureAwait(false)); }
            catch (ImageProblem p) { throw ImageUnsafe(domain.Name, p.Message); }
        }
        var kernel = BootFile(domain.Name, "kernel", definition.Boot?.Kernel);
        var initrd = BootFile(domain.Name, "initrd", definition.Boot?.Initrd);

        DeleteQuietly(paths.Monitor); // a socket left by a QEMU killed with SIGKILL refuses connections
        DeleteQuietly(paths.Serial);
        var opened = new List<Microsoft.Win32.SafeHandles.SafeFileHandle>();
        int pid;
        var clock = Stopwatch.StartNew();
        IReadOnlyList<string> argv;
        try
        {
            var monitor = Linux.ListenUnix(paths.Monitor);
            opened.Add(monitor);
            var console = Linux.Open(paths.Console, Linux.AppendFlags, 0b110_000_000);
            opened.Add(console);
            var serial = Linux.ListenUnix(paths.Serial);
            opened.Add(serial);
            var diskHandles = new List<List<(Microsoft.Win32.SafeHandles.SafeFileHandle Handle, ImageLayer Layer, bool ReadOnly)>>();
            for (var i = 0; i < chains.Count; i++)
            {
                var layers = new List<(Microsoft.Win32.SafeHandles.SafeFileHandle, ImageLayer, bool)>();
                for (var j = 0; j < chains[i].Layers.Count; j++)
                {
                    var layer = chains[i].Layers[j];
                    var readOnly = j > 0 || definition.Disks[i].ReadOnly;
                    var handle = Linux.Open(layer.Path, readOnly ? Linux.ReadOnlyFlags : Linux.O_RDWR);
                    opened.Add(handle);
                    // The file opened is the file checked: a link swapped in between would lead elsewhere.
                    var now = Users.Identify(handle);
                    if (now is not { } id || id.Device != layer.Identity.Device || id.Inode != layer.Identity.Inode)
                        throw ImageUnsafe(domain.Name, $"disk {i}: a file of its chain changed while it was being checked; start again");
                    layers.Add((handle, layer, readOnly));
                }
                diskHandles.Add(layers);
            }
            // Descriptors go to numbers above every one the daemon holds, in the order argv names them.
            var target = opened.Max(h => (int)h.DangerousGetHandle()) + 1;
            var pass = new List<(int Source, int Target)>();
            int Pass(Microsoft.Win32.SafeHandles.SafeFileHandle h)
            {
                pass.Add(((int)h.DangerousGetHandle(), target));
                return target++;
            }
            var monitorFd = Pass(monitor);
            var consoleFd = Pass(console);
            var serialFd = Pass(serial);
            var disks = diskHandles.Select(layers => (IReadOnlyList<QemuDiskLayer>)layers
                .Select(l => new QemuDiskLayer(Pass(l.Handle), l.Layer.Format, l.ReadOnly)).ToList()).ToList();
            argv = [.. _confinement.Prefix, .. QemuCommandLine.Build(_binary, definition with { Uuid = uuid },
                new QemuFiles(monitorFd, consoleFd, disks, kernel, initrd, serialFd), _accel, Options.Sandbox && _caps.Sandbox)];
            QemuLog.Append(paths.Log, "starting: " + string.Join(' ', argv.Select(QuoteForLog)));
            QemuLog.Append(paths.Console, $"--- start of {domain.Name} ---");
            pid = Linux.Spawn(argv, [.. QemuCommandLine.Environment, QemuCommandLine.RunDirectoryVariable + "=" + _virtd.RunDirectory], paths.Log, pass);
        }
        catch (IOException e)
        {
            DeleteQuietly(paths.Monitor);
            DeleteQuietly(paths.Serial);
            _log.LogError("domain {Domain}: cannot start QEMU: {Error}", domain.Name, e.Message);
            throw VirtdException.HypervisorError($"cannot start QEMU for domain '{domain.Name}': {VirtdException.Describe(e)} (the daemon's log has more)");
        }
        finally
        {
            foreach (var h in opened) h.Dispose(); // QEMU holds its own copies
        }
        var logOffset = QemuLog.Length(paths.Log);
        // Our unreaped child cannot vanish, so the pidfd always opens.
        var pidfd = Linux.OpenPidfd(pid) ?? throw VirtdException.HypervisorError($"QEMU pid {pid} vanished before it could be watched");
        _cgroups?.Place(uuid, pid, (definition.MemoryMiB + (long)Options.MemoryOverheadMiB) * 1024 * 1024, Options.PidsMax, _log);
        var startedAt = Time.GetUtcNow();
        var vm = new QemuVm(this, domain.Name, definition, paths, pid, pidfd, logOffset, isChild: true, sink, _log);
        _vms[vm] = 0;
        vm.Watch(_watcher.WatchAsync(pidfd));
        try
        {
            var startTime = ProcFs.ReadStat(pid)?.StartTime ?? 0;
            new QemuStatusFile(domain.Name, uuid, pid, startTime, startedAt, paths.Monitor, _binary, definition).Write(paths.Status);
            using var start = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            start.CancelAfter(Options.StartTimeout);
            var spawned = clock.Elapsed;
            try
            {
                await vm.ConnectAsync(Options.StartTimeout, start.Token).ConfigureAwait(false);
                vm.AttachSerial(readopted: false);
                var connected = clock.Elapsed;
                await vm.CommandAsync("cont", null, start.Token).ConfigureAwait(false);
                _log.LogDebug("domain {Domain}: QEMU pid {Pid} running after {Total:0.0} ms (spawn and status file {Spawn:0.0} ms, monitor {Monitor:0.0} ms, cont {Cont:0.0} ms)",
                    domain.Name, pid, clock.Elapsed.TotalMilliseconds, spawned.TotalMilliseconds, (connected - spawned).TotalMilliseconds,
                    (clock.Elapsed - connected).TotalMilliseconds);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw VirtdException.HypervisorError($"QEMU of domain '{domain.Name}' did not start within {Options.StartTimeout.TotalSeconds:0.###} s");
            }
            return vm;
        }
        catch (Exception e)
        {
            // A failed start leaves nothing behind: kill what was spawned and report QEMU's own words.
            vm.Signal(VmSignal.Kill);
            try { await vm.Exited.WaitAsync(TimeSpan.FromSeconds(5), Time, CancellationToken.None).ConfigureAwait(false); }
            catch (TimeoutException) { _log.LogError("domain {Domain}: QEMU pid {Pid} did not die after SIGKILL", domain.Name, pid); }
            if (e is OperationCanceledException) throw;
            if (vm.ProcessGone.IsCancellationRequested && QemuLog.Tail(paths.Log, logOffset) is { } said && e is VirtdException { Code: ErrorCodes.HypervisorError })
                throw VirtdException.HypervisorError($"QEMU failed to start domain '{domain.Name}': {said}");
            throw;
        }
    }

    /// <summary>A kernel or initrd: resolved inside a pool at this start, and readable by the user QEMU runs as (QEMU reads it itself).</summary>
    private string? BootFile(string domain, string what, string? path)
    {
        if (string.IsNullOrEmpty(path)) return null;
        var real = _pools.Resolve(path) ?? throw ImageUnsafe(domain, $"the {what} is not a file inside a storage pool");
        if (!Users.CanRead(_confinement!.User, real))
            throw VirtdException.HypervisorError($"the {what} of domain '{domain}' cannot be read by {_confinement.User.Name}, the user QEMU runs as: " +
                "make it and the directories above it readable by that user (README: Confinement)");
        return real;
    }

    private static VirtdException ImageUnsafe(string domain, string why) =>
        new(ErrorCodes.ImageUnsafe, 409, "Image unsafe", $"domain '{domain}' was not started: {why}");

    private static string QuoteForLog(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "-_=,./:+@".Contains(c)) ? arg : "'" + arg.Replace("'", "'\\''") + "'";

    internal void Forget(QemuVm vm)
    {
        _vms.TryRemove(vm, out _);
        if (Guid.TryParse(Path.GetFileName(vm.Paths.Monitor).AsSpan(0, 36), out var uuid)) _cgroups?.Remove(uuid, _log);
    }

    /// <summary>Phase 1: every VM's monitor loop and reconnect stop; the VMs themselves keep running.</summary>
    public void ShutdownPrepare()
    {
        lock (_detaching)
        {
            foreach (var vm in _vms.Keys) _detaching.Add(vm.DetachAsync());
        }
    }

    public IEnumerable<string> PendingWork()
    {
        foreach (var vm in _vms.Keys)
        {
            if (vm.Detaching) yield return $"domain {vm.Name} (QEMU pid {vm.Pid}): monitor and event loop still closing";
        }
    }

    public Task ShutdownWaitAsync(CancellationToken cancellationToken)
    {
        Task[] all;
        lock (_detaching) all = [.. _detaching];
        return Task.WhenAll(all).WaitAsync(cancellationToken);
    }

    public async ValueTask CleanupAsync()
    {
        _watcher?.Dispose();
        foreach (var vm in _vms.Keys)
        {
            try { await vm.Background.WaitAsync(TimeSpan.FromSeconds(1), Time).ConfigureAwait(false); }
            catch (TimeoutException) { _log.LogWarning("domain {Domain}: background work still running at cleanup", vm.Name); }
        }
    }

    private void DeleteQuietly(string path)
    {
        try { File.Delete(path); }
        catch (IOException e) { _log.LogWarning("cannot remove {Path}: {Error}", path, e.Message); }
        catch (UnauthorizedAccessException e) { _log.LogWarning("cannot remove {Path}: {Error}", path, e.Message); }
    }
}
