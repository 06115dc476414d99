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

    public QemuDriver(QemuOptions options, VirtdOptions virtd, TimeProvider time, ILogger<QemuDriver> log)
    {
        Options = options;
        _virtd = virtd;
        Time = time;
        _log = log;
        (_binary, _binaryProblem) = QemuDiscovery.FindBinary(options.Binary);
    }

    public DriverKind Kind => DriverKind.Qemu;

    internal QemuOptions Options { get; }
    internal TimeProvider Time { get; }

    public string LogDirectory => Path.Combine(_virtd.StateDirectory, "log");

    public HypervisorInfo Info
    {
        get
        {
            var problem = _binaryProblem ?? _probeProblem;
            var detail = problem ?? (_caps is null ? "QEMU found; not probed yet" : $"QEMU {_caps.Version}{(_caps.Package is { } p ? $" ({p})" : "")}");
            return new HypervisorInfo(DriverKind.Qemu, problem is null, _caps?.Version, detail, _vms.Count)
            {
                Binary = _binary,
                Accelerator = _binary is null ? null : _accel,
                Machines = _caps?.Machines.Where(m => m is "q35" or "pc").ToList(), // the machine types a definition can name
                Sandbox = _caps is null ? null : _caps.Sandbox && Options.Sandbox,
            };
        }
    }

    public async Task InitializeAsync(IReadOnlyList<DomainObject> domains, IVmHost host, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(LogDirectory);
        Directory.CreateDirectory(_virtd.RunDirectory);
        _watcher = new ExitWatcher(_log);
        _accel = QemuDiscovery.ChooseAccelerator(Options.Accel);
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
                _caps = await QemuDiscovery.ProbeAsync(_binary, probeTimeout.Token).ConfigureAwait(false);
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
            if (!File.Exists(paths.Status))
            {
                DeleteQuietly(paths.Monitor);
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
            if (known.Contains(name) || !(name.EndsWith(".qmp", StringComparison.Ordinal) || name.EndsWith(".status.json", StringComparison.Ordinal))) continue;
            var statusPath = name.EndsWith(".qmp", StringComparison.Ordinal) ? file[..^4] + ".status.json" : file;
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
        host.MarkStopped(d, StateReasons.DaemonDown);
    }

    public QemuPaths PathsFor(Guid uuid) => QemuPaths.For(_virtd.RunDirectory, LogDirectory, uuid);

    public async Task<IVmInstance> LaunchAsync(DomainObject domain, DomainDefinition definition, IVmEventSink sink, CancellationToken cancellationToken)
    {
        if (_binary is null || _caps is null || _watcher is null)
            throw new VirtdException(ErrorCodes.HypervisorUnavailable, 409, "Hypervisor unavailable", Info.Detail ?? "QEMU is not available");
        var uuid = domain.Uuid;
        var paths = PathsFor(uuid);
        DeleteQuietly(paths.Monitor); // a socket left by a QEMU killed with SIGKILL refuses connections
        var argv = QemuCommandLine.Build(_binary, definition with { Uuid = uuid }, paths, _accel, Options.Sandbox && _caps.Sandbox);
        QemuLog.Append(paths.Log, "starting: " + string.Join(' ', argv.Select(QuoteForLog)));
        QemuLog.Append(paths.Console, $"--- start of {domain.Name} ---");
        var logOffset = QemuLog.Length(paths.Log);

        var clock = Stopwatch.StartNew();
        int pid;
        try { pid = Linux.Spawn(argv, QemuCommandLine.Environment, paths.Log); }
        catch (IOException e)
        {
            _log.LogError("domain {Domain}: cannot start QEMU: {Error}", domain.Name, e.Message);
            throw VirtdException.HypervisorError($"cannot start QEMU for domain '{domain.Name}': {VirtdException.Describe(e)} (the daemon's log has more)");
        }
        // Our unreaped child cannot vanish, so the pidfd always opens.
        var pidfd = Linux.OpenPidfd(pid) ?? throw VirtdException.HypervisorError($"QEMU pid {pid} vanished before it could be watched");
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

    private static string QuoteForLog(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "-_=,./:+@".Contains(c)) ? arg : "'" + arg.Replace("'", "'\\''") + "'";

    internal void Forget(QemuVm vm) => _vms.TryRemove(vm, out _);

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
