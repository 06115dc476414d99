using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Persistence;
using Virtd.Drivers.Simulated;

namespace Virtd.Testing;

/// <summary>
/// The core wired as the daemon wires it (VirtdHostingExtensions): event bus, registry, job store,
/// scheduler with its workers running, lifecycle, the simulated driver, a store on a temporary
/// directory and the domain service. Time is a <see cref="FakeClock"/>: nothing times out
/// unless a test advances the clock.
/// </summary>
public sealed class CoreHarness : IAsyncDisposable
{
    /// <summary>Real time a test waits for something that should happen at once, before failing.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    public const int HostCpus = 4;

    public CoreHarness(
        Action<JobsOptions>? jobs = null,
        Action<SimulatedOptions>? simulated = null,
        Action<EventsOptions>? events = null,
        bool startWorkers = true)
    {
        Root = Directory.CreateTempSubdirectory("virtd-core-").FullName;
        PoolDirectory = Directory.CreateDirectory(Path.Combine(Root, "images")).FullName;

        JobsOptions = new JobsOptions();
        jobs?.Invoke(JobsOptions);
        SimulatedOptions = new SimulatedOptions();
        simulated?.Invoke(SimulatedOptions);
        EventsOptions = new EventsOptions();
        events?.Invoke(EventsOptions);
        Options = new VirtdOptions
        {
            StateDirectory = Root,
            RunDirectory = Path.Combine(Root, "run"),
            DefaultDriver = DriverKind.Simulated,
        };

        Time = new FakeClock();
        Bus = new EventBus(EventsOptions, Time);
        Registry = new DomainRegistry();
        Jobs = new JobStore(JobsOptions, Time);
        Paths = new StoragePaths([PoolDirectory]);
        Validator = new DomainDefinitionValidator(Paths, HostCpus);
        Store = new DomainStore(Options.DomainsDirectory, NullLogger<DomainStore>.Instance);
        Driver = new SimulatedDriver(SimulatedOptions, Time, NullLogger<SimulatedDriver>.Instance);
        Drivers = new DriverCatalog([Driver]);
        Lifecycle = new DomainLifecycle(Drivers, Time, NullLogger<DomainLifecycle>.Instance);
        Scheduler = new JobScheduler(JobsOptions, Bus, Jobs, Lifecycle, Time, NullLogger<JobScheduler>.Instance);
        Service = new DomainService(Registry, Scheduler, Store, Validator, Drivers, Lifecycle, Bus, Options, Time,
            NullLogger<DomainService>.Instance);
        if (startWorkers) Scheduler.Start();
    }

    public string Root { get; }
    public string PoolDirectory { get; }
    public JobsOptions JobsOptions { get; }
    public SimulatedOptions SimulatedOptions { get; }
    public EventsOptions EventsOptions { get; }
    public VirtdOptions Options { get; }
    public FakeClock Time { get; }
    public EventBus Bus { get; }
    public DomainRegistry Registry { get; }
    public JobStore Jobs { get; }
    public JobScheduler Scheduler { get; }
    public StoragePaths Paths { get; }
    public DomainDefinitionValidator Validator { get; }
    public DomainStore Store { get; }
    public SimulatedDriver Driver { get; }
    public DriverCatalog Drivers { get; }
    public DomainLifecycle Lifecycle { get; }
    public DomainService Service { get; }

    /// <summary>A small valid definition for the simulated driver.</summary>
    public static DomainDefinition Definition(string name, SimulationConfig? simulation = null) => new()
    {
        Name = name,
        Driver = DriverKind.Simulated,
        Vcpus = 1,
        MemoryMiB = 64,
        Simulation = simulation,
    };

    public Task<DomainObject> DefineAsync(string name, SimulationConfig? simulation = null, Func<DomainDefinition, DomainDefinition>? edit = null)
    {
        var def = Definition(name, simulation);
        if (edit is not null) def = edit(def);
        return Service.DefineAsync(def, CancellationToken.None);
    }

    /// <summary>Defines and starts a domain, and checks it runs.</summary>
    public async Task<DomainObject> DefineRunningAsync(string name, SimulationConfig? simulation = null, Func<DomainDefinition, DomainDefinition>? edit = null)
    {
        var d = await DefineAsync(name, simulation, edit);
        var start = await RunAsync(name, new StartCommand());
        Assert.True(start.State == JobState.Succeeded, $"start of {name} ended {start.State}: {start.Error?.Detail}");
        Assert.Equal(DomainState.Running, d.Runtime.State);
        return d;
    }

    /// <summary>Submits an action through the service and waits for its job to finish.</summary>
    public async Task<Job> RunAsync(string domain, JobCommand command)
    {
        var job = Service.Submit(domain, command);
        await FinishedAsync(job);
        return job;
    }

    /// <summary>Queues a job of <paramref name="kind"/> whose body the test writes (straight to the scheduler: no state check).</summary>
    public Job Submit(JobKind kind, DomainObject domain, TestBody body) => Scheduler.Submit(new TestCommand(kind, body), domain);

    /// <summary>The command of an action, by its kind.</summary>
    public static JobCommand Command(JobKind kind) => kind switch
    {
        JobKind.Start => new StartCommand(),
        JobKind.Shutdown => new ShutdownCommand(),
        JobKind.Reboot => new RebootCommand(),
        JobKind.Reset => new ResetCommand(),
        JobKind.Suspend => new SuspendCommand(),
        JobKind.Resume => new ResumeCommand(),
        JobKind.Destroy => new DestroyCommand(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not an action"),
    };

    /// <summary>Waits (real time, bounded) for a job to reach a final state.</summary>
    public static async Task FinishedAsync(Job job, TimeSpan? within = null)
    {
        try
        {
            await job.Finished.WaitAsync(within ?? Patience);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"job {job} did not finish within {(within ?? Patience).TotalSeconds} s; it is {job.State}");
        }
    }

    /// <summary>Polls a condition every few milliseconds until it holds, or fails after <see cref="Patience"/>.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, string what, TimeSpan? within = null)
    {
        var deadline = DateTime.UtcNow + (within ?? Patience);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(2);
        }
    }

    /// <summary>
    /// Waits until code under test has armed at least <paramref name="timers"/> timers on the manual
    /// clock (so the advance cannot come before the wait it is meant to end), then advances it.
    /// </summary>
    public async Task AdvanceWhenArmedAsync(TimeSpan by, int timers = 1)
    {
        await WaitUntilAsync(() => Time.ArmedTimers >= timers, $"{timers} timer(s) are armed");
        Time.Advance(by);
    }

    /// <summary>Creates a file in the storage pool and returns its path.</summary>
    public string CreateImage(string name, int bytes = 512)
    {
        var path = Path.Combine(PoolDirectory, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, new byte[bytes]);
        return path;
    }

    public async ValueTask DisposeAsync()
    {
        await Scheduler.DisposeAsync();
        await Driver.CleanupAsync();
        try { Directory.Delete(Root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>
/// A job body the test controls: it reports when it starts, then waits until released or until its
/// token is cancelled (a hung job that still honours cancellation).
/// </summary>
public sealed class BlockingRunner
{
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Started => _started.Task;
    public bool TokenCancelled { get; private set; }

    public void Release() => _release.TrySetResult();

    public TestBody Runner => async (job, ct) =>
    {
        _started.TrySetResult();
        try
        {
            await _release.Task.WaitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            TokenCancelled = true;
            throw;
        }
        return new JobResult { State = job.Domain.Runtime.State };
    };

    public async Task WaitStartedAsync()
    {
        try { await Started.WaitAsync(CoreHarness.Patience); }
        catch (TimeoutException) { Assert.Fail("the blocking job never started"); }
    }
}

/// <summary>What a test job does when a worker runs it.</summary>
public delegate Task<JobResult> TestBody(Job job, CancellationToken cancellationToken);

/// <summary>A job of any kind whose body the test writes; as a destroy it is a priority job, like the real one.</summary>
public sealed record TestCommand(JobKind TestKind, TestBody Body) : JobCommand(TestKind)
{
    public override Task<JobResult> RunAsync(Job job, DomainLifecycle lifecycle, CancellationToken cancellationToken) => Body(job, cancellationToken);
}
