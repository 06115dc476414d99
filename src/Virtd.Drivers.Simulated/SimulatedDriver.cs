using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;

namespace Virtd.Drivers.Simulated;

/// <summary>
/// An in-memory hypervisor with the same contract as QEMU (libvirt's test driver): VMs boot, pause,
/// power off by ACPI, die on SIGTERM or SIGKILL, and can be made to misbehave per domain through the
/// definition's <c>simulation</c> block. Used by API tests, demos and on hosts without QEMU.
/// </summary>
public sealed class SimulatedDriver(SimulatedOptions options, TimeProvider time, ILogger<SimulatedDriver> log) : IHypervisorDriver
{
    private readonly ConcurrentDictionary<SimulatedVm, byte> _running = new();
    private int _nextPid = 100_000;

    public DriverKind Kind => DriverKind.Simulated;

    public HypervisorInfo Info => new(DriverKind.Simulated, true, "1.0", "in-memory simulated hypervisor", _running.Count);

    internal TimeSpan MonitorTimeout => options.MonitorTimeout;
    internal TimeProvider Time => time;

    public Task InitializeAsync(IReadOnlyList<DomainObject> domains, IVmHost host, CancellationToken cancellationToken)
    {
        // Simulated VMs live in this process only: nothing survives a daemon restart to take back.
        log.LogInformation("simulated driver ready");
        return Task.CompletedTask;
    }

    public void ShutdownPrepare()
    {
        // Nothing runs in the background here: VM timers belong to their VMs and end with the process.
    }

    public Task ShutdownWaitAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public ValueTask CleanupAsync()
    {
        foreach (var vm in _running.Keys) vm.DisposeTimers();
        return ValueTask.CompletedTask;
    }

    public async Task<IVmInstance> LaunchAsync(DomainObject domain, DomainDefinition definition, IVmEventSink sink, CancellationToken cancellationToken)
    {
        var vm = new SimulatedVm(this, domain.Name, definition, sink, Interlocked.Increment(ref _nextPid));
        _running[vm] = 0;
        try
        {
            var sim = definition.Simulation;
            if (sim is { BootDelayMs: > 0 })
                await Task.Delay(TimeSpan.FromMilliseconds(sim.BootDelayMs), time, cancellationToken).ConfigureAwait(false);
            // hangMonitor wedges a VM that runs (like a QEMU stopped later): the boot itself completes.
            await vm.MonitorCommandAsync("cont", cancellationToken, mayHang: false).ConfigureAwait(false);
            return vm;
        }
        catch
        {
            // A failed start leaves nothing behind (libvirt kills a half-started QEMU).
            vm.Signal(VmSignal.Kill);
            throw;
        }
    }

    internal void Forget(SimulatedVm vm) => _running.TryRemove(vm, out _);
}

/// <summary>One simulated VM process.</summary>
internal sealed class SimulatedVm : IVmInstance
{
    private readonly SimulatedDriver _driver;
    private readonly string _name;
    private readonly DomainDefinition _definition;
    private readonly SimulationConfig _sim;
    private readonly IVmEventSink _sink;
    private readonly TaskCompletionSource<VmExit> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly object _lock = new();
    private ITimer? _acpiTimer;
    private bool _paused;
    private bool _powerdownPending;

    public SimulatedVm(SimulatedDriver driver, string name, DomainDefinition definition, IVmEventSink sink, int pid)
    {
        _driver = driver;
        _name = name;
        _definition = definition;
        _sim = definition.Simulation ?? new SimulationConfig();
        _sink = sink;
        Pid = pid;
        // A console like a guest's shell on a serial line: it says it is ready and echoes what is typed.
        _console = new Virtd.Core.Consoles.ConsoleHub((input, _) =>
        {
            _console!.Publish(System.Text.Encoding.UTF8.GetBytes(System.Text.Encoding.UTF8.GetString(input.Span).Replace("\r", "\r\n")));
            return ValueTask.CompletedTask;
        });
        _console.Publish(System.Text.Encoding.UTF8.GetBytes($"simulated guest {name}: ready\r\n"));
        _launchedAt = driver.Time.GetTimestamp();
    }

    private readonly long _launchedAt;
    private readonly Virtd.Core.Consoles.ConsoleHub _console;

    public Virtd.Core.Consoles.IVmConsole? Console => _console;

    public int Pid { get; }

    public Task<VmExit> Exited => _exit.Task;

    public void Signal(VmSignal signal)
    {
        if (_exit.Task.IsCompleted) return;
        if (signal == VmSignal.Term && _sim.IgnoresSigterm) return;
        Exit(new VmExit(VmExitKind.HostSignal, Signal: signal == VmSignal.Term ? 15 : 9,
            Detail: signal == VmSignal.Term ? "terminated by SIGTERM" : "killed by SIGKILL"));
    }

    public async Task PauseAsync(CancellationToken cancellationToken)
    {
        await MonitorCommandAsync("stop", cancellationToken).ConfigureAwait(false);
        lock (_lock) _paused = true;
    }

    public async Task ResumeAsync(CancellationToken cancellationToken)
    {
        await MonitorCommandAsync("cont", cancellationToken).ConfigureAwait(false);
        bool arm;
        lock (_lock)
        {
            _paused = false;
            arm = _powerdownPending;
            _powerdownPending = false;
        }
        if (arm) ArmAcpi();
    }

    public Task ResetAsync(CancellationToken cancellationToken) => MonitorCommandAsync("system_reset", cancellationToken);

    public async Task PowerdownAsync(CancellationToken cancellationToken)
    {
        await MonitorCommandAsync("system_powerdown", cancellationToken).ConfigureAwait(false);
        if (_sim.IgnoresAcpi) return;
        lock (_lock)
        {
            // A paused guest cannot see the button until it runs again.
            if (_paused)
            {
                _powerdownPending = true;
                return;
            }
        }
        ArmAcpi();
    }

    public async Task RebootAsync(CancellationToken cancellationToken)
    {
        await MonitorCommandAsync("system_powerdown", cancellationToken).ConfigureAwait(false);
        if (_sim.IgnoresAcpi) return;
        if (_definition.OnReboot == LifecycleAction.Destroy)
            Exit(new VmExit(VmExitKind.GuestReset, ExitCode: 0, Detail: "guest reset with onReboot=destroy"));
    }

    private void ArmAcpi()
    {
        if (_sim.AcpiShutdownDelayMs <= 0)
        {
            Exit(new VmExit(VmExitKind.GuestShutdown, ExitCode: 0));
            return;
        }
        lock (_lock)
        {
            if (_exit.Task.IsCompleted || _acpiTimer is not null) return;
            _acpiTimer = _driver.Time.CreateTimer(static s => ((SimulatedVm)s!).Exit(new VmExit(VmExitKind.GuestShutdown, ExitCode: 0)),
                this, TimeSpan.FromMilliseconds(_sim.AcpiShutdownDelayMs), Timeout.InfiniteTimeSpan);
        }
    }


    /// <summary>
    /// Figures a simulated VM makes up: its vCPUs busy 1 % of the time since launch, a quarter of its memory resident,
    /// no disk I/O. With <c>hangMonitor</c> it answers never, as a hung QEMU would not (until cancelled).
    /// </summary>
    public async Task<VmStats> ReadStatsAsync(CancellationToken cancellationToken)
    {
        await MonitorCommandAsync("query-blockstats", cancellationToken).ConfigureAwait(false);
        var memory = (long)_definition.MemoryMiB * 1024 * 1024;
        var disks = _definition.Disks.Select((_, i) => new DiskStats($"disk{i}", 0, 0, 0, 0, 0, 0)).ToArray();
        return new VmStats(_driver.Time.GetElapsedTime(_launchedAt).TotalSeconds * 0.01 * _definition.Vcpus, memory / 4, memory, disks);
    }

    /// <summary>A monitor round trip: instant, or hung until cancelled or timed out when <c>hangMonitor</c>; fails once the VM is gone.</summary>
    internal async Task MonitorCommandAsync(string command, CancellationToken cancellationToken, bool mayHang = true)
    {
        if (_exit.Task.IsCompleted) throw Gone(command);
        if (!_sim.HangMonitor || !mayHang) return;
        var timeout = _driver.MonitorTimeout;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var delay = Task.Delay(timeout, _driver.Time, cts.Token);
        var first = await Task.WhenAny(delay, _exit.Task).ConfigureAwait(false);
        await cts.CancelAsync().ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (first == _exit.Task) throw Gone(command);
        throw VirtdException.MonitorTimeout(_name, timeout);
    }

    private VirtdException Gone(string command) =>
        VirtdException.HypervisorError($"monitor of domain '{_name}' closed during '{command}': the VM exited");

    private void Exit(VmExit exit)
    {
        if (!_exit.TrySetResult(exit)) return;
        _console.End("the domain stopped");
        DisposeTimers();
        _driver.Forget(this);
        _sink.OnExited(this, exit);
    }

    internal void DisposeTimers()
    {
        lock (_lock)
        {
            _acpiTimer?.Dispose();
            _acpiTimer = null;
        }
    }
}
