using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;
using Virtd.Drivers.Qemu.Monitor;
using Virtd.Drivers.Qemu.Native;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// One QEMU process and its monitor (libvirt's qemu_process.c and the per-VM event handling of seed 004).
/// Its exit is seen through a pidfd the moment it happens; its monitor events are handled one at a time
/// by this VM's own loop, so a slow or hung VM delays nothing but itself.
/// </summary>
internal sealed class QemuVm : IVmInstance
{
    private readonly QemuDriver _driver;
    private readonly PidfdHandle _pidfd;
    private readonly long _logOffset;
    private readonly bool _isChild;
    private readonly ILogger _log;
    private readonly TaskCompletionSource<VmExit> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _processGone = new();
    private readonly CancellationTokenSource _life = new();
    private readonly Lock _sync = new();
    private IVmEventSink? _sink;
    private QmpMonitor? _monitor;
    private Task<QmpMonitor>? _connecting;
    private Task _eventLoop = Task.CompletedTask;
    private Task _reconnect = Task.CompletedTask;
    private Task? _watch;
    private Task? _detached;
    private QemuSerial? _serial;
    private int _vncClients;

    // Set by the event loop, read when the process has exited.
    private string? _shutdownReason;
    private VmExitKind? _exitKind;
    private string? _exitDetail;
    private volatile bool _guestDown;
    private int _expectStop;
    private TaskCompletionSource? _reboot;
    private long _lastReset = long.MinValue / 2;
    private volatile bool _noBalloon;

    /// <summary>A guest reset this soon after another reset is the firmware's own, not a second reboot.</summary>
    private static readonly TimeSpan FirmwareResetWindow = TimeSpan.FromSeconds(1);

    public QemuVm(QemuDriver driver, string name, DomainDefinition definition, QemuPaths paths, int pid, PidfdHandle pidfd,
        long logOffset, bool isChild, IVmEventSink? sink, ILogger log)
    {
        _driver = driver;
        Name = name;
        Definition = definition;
        Paths = paths;
        Pid = pid;
        _pidfd = pidfd;
        _logOffset = logOffset;
        _isChild = isChild;
        _sink = sink;
        _log = log;
    }

    public string Name { get; }
    public DomainDefinition Definition { get; }
    public QemuPaths Paths { get; }
    public int Pid { get; }
    public Task<VmExit> Exited => _exit.Task;

    /// <summary>Cancelled the moment the process is seen to exit.</summary>
    public CancellationToken ProcessGone => _processGone.Token;

    private TimeSpan MonitorTimeout => _driver.Options.MonitorTimeout;

    /// <summary>Starts watching for the process's exit. Called once, right after construction.</summary>
    public void Watch(Task<WaitStatus> processExit) => _watch = WatchAsync(processExit);

    public void SetSink(IVmEventSink sink) => _sink = sink;

    // ---------------- IVmInstance ----------------

    public void Signal(VmSignal signal)
    {
        if (_exit.Task.IsCompleted) return;
        try
        {
            // Through the pidfd: a pid reused by another process after this one exited can never be hit.
            Linux.SendSignal(_pidfd, signal == VmSignal.Kill ? Linux.SIGKILL : Linux.SIGTERM);
        }
        catch (IOException e)
        {
            _log.LogWarning("domain {Domain}: signal to pid {Pid} failed: {Error}", Name, Pid, e.Message);
        }
        catch (ObjectDisposedException)
        {
            // The process was reaped between the check above and the signal: nothing to signal.
        }
    }

    public async Task PauseAsync(CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _expectStop);
        await CommandAsync("stop", null, cancellationToken).ConfigureAwait(false);
    }

    public Task ResumeAsync(CancellationToken cancellationToken) => CommandAsync("cont", null, cancellationToken);

    public Task ResetAsync(CancellationToken cancellationToken) => CommandAsync("system_reset", null, cancellationToken);

    public Virtd.Core.Consoles.IVmConsole? Console => Volatile.Read(ref _serial)?.Hub;

    /// <summary>
    /// Connects the daemon to the serial port (at launch, and again when a restarted daemon takes the VM back: then the
    /// history a viewer gets first comes from the log). Without a serial socket (started by an older daemon) there is no console.
    /// </summary>
    public void AttachSerial(bool readopted)
    {
        if (!File.Exists(Paths.Serial)) return;
        var serial = new QemuSerial(Paths.Serial, Name, _log);
        if (readopted) serial.Seed(Paths.Console);
        lock (_sync)
        {
            if (_serial is not null || _life.IsCancellationRequested) return;
            if (!serial.Start(_life.Token)) return;
            _serial = serial;
        }
    }

    /// <summary>
    /// A new VNC client: one end of a socket pair goes to QEMU over the monitor (<c>getfd</c>, then <c>add_client</c>), the
    /// other is returned. QEMU's VNC server listens nowhere (<c>-vnc none</c>).
    /// </summary>
    public async Task<Stream> OpenVncAsync(CancellationToken cancellationToken)
    {
        if (!Definition.VncEnabled)
            throw new VirtdException(ErrorCodes.VncUnavailable, 409, "VNC unavailable",
                $"domain '{Name}' runs without VNC: set \"graphics\": {{\"vnc\": true}} in its definition, then start it again");
        var (ours, theirs) = Linux.SocketPair();
        var fdName = $"vnc{Interlocked.Increment(ref _vncClients)}";
        try
        {
            using (theirs)
            {
                var monitor = await MonitorAsync("getfd", cancellationToken).ConfigureAwait(false);
                await monitor.ExecuteAsync("getfd", new JsonObject { ["fdname"] = fdName }, MonitorTimeout, theirs, cancellationToken).ConfigureAwait(false);
            }
            try
            {
                await CommandAsync("add_client", new JsonObject { ["protocol"] = "vnc", ["fdname"] = fdName, ["skipauth"] = true }, cancellationToken)
                    .ConfigureAwait(false);
            }
            catch (VirtdException)
            {
                try { await CommandAsync("closefd", new JsonObject { ["fdname"] = fdName }, CancellationToken.None).ConfigureAwait(false); }
                catch (VirtdException) { }
                throw;
            }
            return new System.Net.Sockets.NetworkStream(new System.Net.Sockets.Socket(ours), ownsSocket: true);
        }
        catch
        {
            ours.Dispose();
            throw;
        }
    }

    public Task PowerdownAsync(CancellationToken cancellationToken) => CommandAsync("system_powerdown", null, cancellationToken);

    /// <summary>
    /// ACPI reboot: presses the power button and, when the guest has powered off, resets and resumes it
    /// in the same process (libvirt's "fake reboot"); with <c>onReboot: destroy</c> the VM ends instead.
    /// Returns when the guest is running again or the VM has ended.
    /// </summary>
    public async Task RebootAsync(CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _reboot, done);
        try
        {
            await CommandAsync("system_powerdown", null, cancellationToken).ConfigureAwait(false);
            var timeout = TimeSpan.FromSeconds(ShutdownCommand.DefaultTimeout);
            try
            {
                await Task.WhenAny(done.Task, _exit.Task).WaitAsync(timeout, _driver.Time, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                throw new VirtdException(ErrorCodes.ShutdownTimeout, 504, "Reboot timeout",
                    $"domain '{Name}' did not react to the ACPI power button within {timeout.TotalSeconds:0} s; it was not rebooted");
            }
        }
        finally
        {
            Interlocked.CompareExchange(ref _reboot, null, done);
        }
    }

    /// <summary>
    /// CPU time of the vCPU threads and the process's RSS from <c>/proc</c> (never waits on QEMU), then balloon and block
    /// figures over the monitor already connected: no reconnect is started for figures, and a hung QEMU makes this wait
    /// until <paramref name="cancellationToken"/> or the monitor timeout ends it.
    /// </summary>
    public async Task<VmStats> ReadStatsAsync(CancellationToken cancellationToken)
    {
        var (cpu, rss) = ProcFs.ReadUsage(Pid) ?? throw VirtdException.HypervisorError($"QEMU of domain '{Name}' is gone");
        var monitor = Volatile.Read(ref _monitor);
        if (monitor is not { CloseReason: null } || _exit.Task.IsCompleted)
            throw VirtdException.HypervisorError($"the monitor of domain '{Name}' is not connected");
        var memory = (long)Definition.MemoryMiB * 1024 * 1024;
        var balloon = memory;
        if (!_noBalloon)
        {
            try
            {
                var b = await monitor.ExecuteAsync("query-balloon", null, MonitorTimeout, cancellationToken).ConfigureAwait(false);
                if (b.TryGetProperty("actual", out var actual) && actual.TryGetInt64(out var n)) balloon = n;
            }
            catch (VirtdException e) when (e.Code == ErrorCodes.HypervisorError && monitor.CloseReason is null)
            {
                // "No balloon device has been activated": the guest has what it was given, and a VM's devices do not
                // change while it runs, so it is not asked again.
                _noBalloon = true;
            }
        }
        var blocks = await monitor.ExecuteAsync("query-blockstats", null, MonitorTimeout, cancellationToken).ConfigureAwait(false);
        return new VmStats(cpu, rss, balloon, QmpStats.Disks(blocks));
    }

    // ---------------- monitor ----------------

    /// <summary>Runs a monitor command, connecting first if the monitor is being (re)connected.</summary>
    public async Task<JsonElement> CommandAsync(string command, JsonObject? arguments, CancellationToken cancellationToken)
    {
        var monitor = await MonitorAsync(command, cancellationToken).ConfigureAwait(false);
        return await monitor.ExecuteAsync(command, arguments, MonitorTimeout, cancellationToken).ConfigureAwait(false);
    }

    private async Task<QmpMonitor> MonitorAsync(string command, CancellationToken cancellationToken)
    {
        var current = Volatile.Read(ref _monitor);
        if (current is { CloseReason: null }) return current;
        if (_processGone.IsCancellationRequested || _exit.Task.IsCompleted)
            throw VirtdException.HypervisorError($"domain '{Name}' is not running: its QEMU exited before '{command}'");
        if (_life.IsCancellationRequested) throw new OperationCanceledException("the daemon is stopping");
        return await ConnectAsync(MonitorTimeout, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Connects the monitor (one attempt at a time, shared by whoever needs it), bounded by
    /// <paramref name="timeout"/>; fails <c>monitor-timeout</c> when QEMU does not greet in time.
    /// </summary>
    public async Task<QmpMonitor> ConnectAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        Task<QmpMonitor> attempt;
        lock (_sync)
        {
            if (_monitor is { CloseReason: null } open) return open;
            if (_connecting is null || _connecting.IsCompleted) _connecting = ConnectOnceAsync(timeout);
            attempt = _connecting;
        }
        return await attempt.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task<QmpMonitor> ConnectOnceAsync(TimeSpan timeout)
    {
        await Task.Yield();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(_life.Token, _processGone.Token);
        cts.CancelAfter(timeout);
        QmpMonitor monitor;
        try
        {
            monitor = await QmpMonitor.ConnectAsync(Paths.Monitor, Name, MonitorTimeout, _driver.Time, _log, cts.Token, _driver.Metrics).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_processGone.IsCancellationRequested)
        {
            throw VirtdException.HypervisorError($"QEMU of domain '{Name}' exited before its monitor answered");
        }
        catch (OperationCanceledException) when (!_life.IsCancellationRequested)
        {
            throw VirtdException.MonitorTimeout(Name, timeout);
        }
        lock (_sync)
        {
            _monitor = monitor;
            _eventLoop = EventLoopAsync(monitor);
        }
        return monitor;
    }

    /// <summary>For a VM found at daemon start: reconnect within the reconnect timeout, then read its real state.</summary>
    public void StartReconnect() => _reconnect = ReconnectAsync();

    private async Task ReconnectAsync()
    {
        await Task.Yield();
        try
        {
            var monitor = await ConnectAsync(_driver.Options.ReconnectTimeout, _life.Token).ConfigureAwait(false);
            AttachSerial(readopted: true);
            var status = await monitor.ExecuteAsync("query-status", null, MonitorTimeout, _life.Token).ConfigureAwait(false);
            var runState = status.TryGetProperty("status", out var s) ? s.GetString() ?? "" : "";
            _log.LogInformation("domain {Domain}: re-adopted QEMU pid {Pid} ({Status})", Name, Pid, runState);
            QemuLog.Append(Paths.Log, $"re-adopted pid {Pid}, QEMU status '{runState}'");
            await ApplyRunStateAsync(runState).ConfigureAwait(false);
        }
        catch (OperationCanceledException) { }
        catch (VirtdException e) when (e.Code == ErrorCodes.MonitorTimeout)
        {
            _log.LogWarning("domain {Domain}: QEMU pid {Pid} did not answer on its monitor within {Timeout}; marked unresponsive",
                Name, Pid, _driver.Options.ReconnectTimeout);
            _sink?.OnStateObserved(this, DomainState.Running, StateReasons.MonitorUnresponsive, "unresponsive");
        }
        catch (VirtdException e)
        {
            _log.LogInformation("domain {Domain}: reconnect ended: {Detail}", Name, e.Detail);
        }
    }

    private async Task ApplyRunStateAsync(string runState)
    {
        switch (runState)
        {
            case "running":
                _sink?.OnStateObserved(this, DomainState.Running, StateReasons.Reconnected, "reconnected");
                break;
            case "shutdown":
                // The guest powered off while no daemon watched (-no-shutdown kept QEMU): finish what it asked for.
                _shutdownReason ??= "guest-shutdown";
                _guestDown = true;
                await EndAsync(VmExitKind.GuestShutdown, null).ConfigureAwait(false);
                break;
            case "prelaunch":
                await EndAsync(VmExitKind.Crashed, "its start was interrupted when the previous daemon stopped").ConfigureAwait(false);
                break;
            case "guest-panicked":
                await EndAsync(VmExitKind.Crashed, "the guest panicked").ConfigureAwait(false);
                break;
            default:
                _sink?.OnStateObserved(this, DomainState.Paused, runState == "paused" ? StateReasons.Reconnected : runState, "reconnected");
                break;
        }
    }

    // ---------------- events ----------------

    /// <summary>This VM's serial event queue: one event at a time, in QEMU's order.</summary>
    private async Task EventLoopAsync(QmpMonitor monitor)
    {
        await Task.Yield();
        // Started by whichever job connected the monitor: what the loop does later is no part of that job's trace.
        System.Diagnostics.Activity.Current = null;
        try
        {
            await foreach (var e in monitor.Events.ReadAllAsync(_life.Token).ConfigureAwait(false))
            {
                try { await HandleAsync(e).ConfigureAwait(false); }
                catch (Exception ex) when (ex is VirtdException or OperationCanceledException)
                {
                    _log.LogInformation("domain {Domain}: handling {Event} ended early: {Error}", Name, e.Name, ex.Message);
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    private async Task HandleAsync(QmpEvent e)
    {
        switch (e.Name)
        {
            case "STOP":
                if (_guestDown) return; // QEMU pauses a guest that powered off (-no-shutdown): not a suspend
                var requested = Interlocked.Decrement(ref _expectStop) >= 0;
                if (!requested) Interlocked.Exchange(ref _expectStop, 0);
                _sink?.OnStateChanged(this, DomainState.Paused, requested ? StateReasons.User : StateReasons.Hypervisor, "suspended");
                break;
            case "RESUME":
                _guestDown = false;
                Interlocked.Exchange(ref _expectStop, 0);
                _sink?.OnStateChanged(this, DomainState.Running, StateReasons.Unpaused, "resumed");
                break;
            case "RESET":
                // After any reset SeaBIOS resets the machine once more (~30 ms later, reported as a guest reset):
                // that one belongs to the reset before it.
                var now = _driver.Time.GetTimestamp();
                var sinceLast = _driver.Time.GetElapsedTime(Interlocked.Exchange(ref _lastReset, now), now);
                if (e.DataBool("guest") != true || sinceLast < FirmwareResetWindow) break;
                // The guest rebooted itself (a reboot command, a triple fault, panic=-1).
                if (Definition.OnReboot == LifecycleAction.Destroy) await EndAsync(VmExitKind.GuestReset, null).ConfigureAwait(false);
                else _sink?.OnGuestEvent(this, "rebooted");
                break;
            case "SHUTDOWN":
                await OnShutdownAsync(e.DataString("reason") ?? "unknown").ConfigureAwait(false);
                break;
            case "GUEST_PANICKED":
                await EndAsync(VmExitKind.Crashed, "the guest panicked").ConfigureAwait(false);
                break;
        }
    }

    private async Task OnShutdownAsync(string reason)
    {
        Interlocked.CompareExchange(ref _shutdownReason, reason, null);
        if (reason is not "guest-shutdown") return; // a host signal or quit: QEMU ends by itself
        _guestDown = true;
        var reboot = Volatile.Read(ref _reboot);
        if (reboot is null)
        {
            await EndAsync(VmExitKind.GuestShutdown, null).ConfigureAwait(false);
            return;
        }
        if (Definition.OnReboot == LifecycleAction.Destroy)
        {
            await EndAsync(VmExitKind.GuestReset, null).ConfigureAwait(false);
            return;
        }
        // Fake reboot: the guest is off but QEMU lives on; reset it and let it run again.
        await CommandAsync("system_reset", null, _life.Token).ConfigureAwait(false);
        await CommandAsync("cont", null, _life.Token).ConfigureAwait(false);
        Interlocked.CompareExchange(ref _shutdownReason, null, reason);
        _guestDown = false;
        reboot.TrySetResult();
    }

    /// <summary>The guest is done (powered off, reset with onReboot=destroy, panicked): end QEMU with that as its reason.</summary>
    private async Task EndAsync(VmExitKind kind, string? detail)
    {
        if (_exitKind is null)
        {
            _exitKind = kind;
            _exitDetail = detail;
        }
        try
        {
            await CommandAsync("quit", null, _life.Token).ConfigureAwait(false);
        }
        catch (VirtdException e) when (e.Code == ErrorCodes.MonitorTimeout)
        {
            _log.LogWarning("domain {Domain}: 'quit' timed out; sending SIGTERM", Name);
            Signal(VmSignal.Term);
        }
        catch (VirtdException)
        {
            // The monitor closed under the quit: QEMU is exiting already.
        }
    }

    // ---------------- exit ----------------

    private async Task WatchAsync(Task<WaitStatus> processExit)
    {
        WaitStatus status;
        try { status = await processExit.ConfigureAwait(false); }
        catch (OperationCanceledException) { return; } // the daemon stops and leaves the VM running
        await _processGone.CancelAsync().ConfigureAwait(false);

        // QEMU's end of the socket is closed: let the reader reach EOF and the event loop handle the last events
        // (the SHUTDOWN reason), bounded in case something is stuck.
        var monitor = Volatile.Read(ref _monitor);
        if (monitor is not null) await WaitBoundedAsync(monitor.Completion).ConfigureAwait(false);
        await WaitBoundedAsync(_eventLoop).ConfigureAwait(false);

        var exit = Classify(status);
        TryDelete(Paths.Status);
        TryDelete(Paths.Monitor);
        TryDelete(Paths.Serial);
        if (Volatile.Read(ref _serial) is { } serial)
        {
            await WaitBoundedAsync(serial.Completion).ConfigureAwait(false);
            serial.Hub.End("the domain stopped");
        }
        QemuLog.Append(Paths.Log, $"QEMU pid {Pid} ended: {Describe(exit)}");
        if (monitor is not null) await monitor.DisposeAsync().ConfigureAwait(false);
        _pidfd.Dispose(); // reaped: nothing left to signal, and one descriptor less per run
        _driver.Forget(this);
        _exit.TrySetResult(exit);
        _sink?.OnExited(this, exit);
    }

    private async Task WaitBoundedAsync(Task task)
    {
        try { await task.WaitAsync(TimeSpan.FromSeconds(1), _driver.Time).ConfigureAwait(false); }
        catch (TimeoutException) { _log.LogWarning("domain {Domain}: monitor did not wind down within 1 s of QEMU's exit", Name); }
    }

    private VmExit Classify(WaitStatus status)
    {
        var (code, signal) = (status.ExitCode, status.Signal);
        if (_exitKind is { } kind) return new VmExit(kind, code, signal, _exitDetail);
        var tail = QemuLog.Tail(Paths.Log, _logOffset);
        switch (Volatile.Read(ref _shutdownReason))
        {
            case "host-signal": return new VmExit(VmExitKind.HostSignal, code, signal, tail ?? "terminated by a signal");
            case "host-qmp-quit": return new VmExit(VmExitKind.HostQuit, code, signal, "quit through the monitor");
            case "guest-shutdown": return new VmExit(VmExitKind.GuestShutdown, code, signal);
            case "guest-reset": return new VmExit(VmExitKind.GuestReset, code, signal);
            case "guest-panic": return new VmExit(VmExitKind.Crashed, code, signal, "the guest panicked");
        }
        if (signal is { } sig) return new VmExit(VmExitKind.HostSignal, code, signal, $"killed by {SignalName(sig)}" + (tail is null ? "" : $": {tail}"));
        if (code is { } c) return new VmExit(VmExitKind.Crashed, code, signal, $"QEMU exited with status {c}" + (tail is null ? "" : $": {tail}"));
        return new VmExit(VmExitKind.Crashed, null, null,
            (_isChild ? "QEMU exited" : "QEMU exited (exit status unknown: it was started by an earlier daemon)") + (tail is null ? "" : $": {tail}"));
    }

    public static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP", 2 => "SIGINT", 3 => "SIGQUIT", 6 => "SIGABRT", 9 => "SIGKILL", 11 => "SIGSEGV", 15 => "SIGTERM",
        _ => $"signal {signal}",
    };

    private static string Describe(VmExit exit) =>
        $"{exit.Kind}" + (exit.ExitCode is { } c ? $", status {c}" : "") + (exit.Signal is { } s ? $", {SignalName(s)}" : "")
        + (exit.Detail is { } d ? $" ({d})" : "");

    private void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException e) { _log.LogWarning("domain {Domain}: cannot remove {Path}: {Error}", Name, path, e.Message); }
        catch (UnauthorizedAccessException e) { _log.LogWarning("domain {Domain}: cannot remove {Path}: {Error}", Name, path, e.Message); }
    }

    /// <summary>
    /// Daemon shutdown phase 1: stop this VM's background work and close the monitor; QEMU keeps running
    /// and the next daemon takes it back. Returns the task that phase 2 awaits.
    /// </summary>
    public Task DetachAsync()
    {
        lock (_sync) return _detached ??= DetachCoreAsync();
    }

    private async Task DetachCoreAsync()
    {
        // A connect in progress is cancelled by _life too; once it has ended, the monitor it may have set is the one to close.
        await _life.CancelAsync().ConfigureAwait(false);
        Task<QmpMonitor>? connecting;
        lock (_sync) connecting = _connecting;
        if (connecting is not null)
        {
            try { await connecting.ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or VirtdException) { }
        }
        QmpMonitor? monitor;
        lock (_sync) monitor = _monitor;
        if (monitor is not null) await monitor.DisposeAsync().ConfigureAwait(false);
        QemuSerial? serial;
        lock (_sync) serial = _serial;
        if (serial is not null)
        {
            await serial.Completion.ConfigureAwait(false);
            serial.Hub.End("the daemon is stopping");
        }
        await Task.WhenAll(_eventLoop, _reconnect).ConfigureAwait(false);
    }

    /// <summary>True while a detach (<see cref="DetachAsync"/>) is still closing the monitor and event loop.</summary>
    public bool Detaching
    {
        get { lock (_sync) return _detached is { IsCompleted: false }; }
    }

    /// <summary>Every task this VM owns, for the driver's cleanup.</summary>
    public Task Background => Task.WhenAll(_eventLoop, _reconnect, _watch ?? Task.CompletedTask, Volatile.Read(ref _serial)?.Completion ?? Task.CompletedTask);

    public override string ToString() => $"{Name} (pid {Pid})";
}
