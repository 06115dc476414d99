using Microsoft.Extensions.Hosting.Internal;
using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Api.Hosting;
using Virtd.Core.Observability;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>
/// When the daemon gives memory back (on a manual clock), and what a trim does to a running .NET process. Run alone:
/// start-up's no-GC region is the process's, and every in-process daemon of a test running meanwhile begins one.
/// </summary>
[Collection(MemoryTrimmerCollection.Name)]
public sealed class MemoryTrimmerTests : IAsyncDisposable
{
    private static readonly TimeSpan Quiet = TimeSpan.FromSeconds(30);
    private readonly CoreHarness _h = new();
    private readonly DaemonStatus _status;
    private readonly IdleMonitor _idle;
    private readonly MemoryOptions _options = new() { TrimWhenIdle = Quiet };
    private readonly MemoryTrimmer _trimmer;
    // The daemon's resident memory as the trimmer sees it: this process's own changes with every other test.
    private long _resident = 40L << 20;

    public MemoryTrimmerTests()
    {
        _status = new DaemonStatus(_h.Time);
        _idle = new IdleMonitor(_h.Options, _h.Registry, _h.Scheduler, _status, new ApplicationLifetime(NullLogger<ApplicationLifetime>.Instance), _h.Time,
            NullLogger<IdleMonitor>.Instance);
        _trimmer = new MemoryTrimmer(_options, _idle, _status, _h.Time, NullLogger<MemoryTrimmer>.Instance)
        {
            ResidentBytes = () => Interlocked.Read(ref _resident),
        };
    }

    private void Request()
    {
        _idle.RequestStarted();
        _idle.RequestEnded();
    }

    /// <summary>Advances the clock <paramref name="checks"/> times by <see cref="MemoryTrimmer.BurstCheck"/>, each once the trimmer waits.</summary>
    private async Task StepAsync(int checks)
    {
        for (var i = 0; i < checks; i++) await _h.AdvanceWhenArmedAsync(MemoryTrimmer.BurstCheck);
    }

    /// <summary>Advances the clock check by check (each once the trimmer waits on it) for <paramref name="span"/>.</summary>
    private async Task PassAsync(TimeSpan span)
    {
        for (var passed = TimeSpan.Zero; passed < span; passed += TimeSpan.FromSeconds(5))
            await _h.AdvanceWhenArmedAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task TrimsASecondAfterReady_ThenOncePerQuietSpellAfterRequests()
    {
        StartupGc.Begin();
        await _trimmer.StartAsync(CancellationToken.None);
        Assert.Equal(0, _h.Time.ArmedTimers); // waits for readiness, on no clock
        _status.SetReady();
        await _h.AdvanceWhenArmedAsync(MemoryTrimmer.AfterStart);
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 1, "the start-up trim");
        // Start-up's no-GC region ended with the start-up trim, whose collection pays for it.
        Assert.NotEqual(System.Runtime.GCLatencyMode.NoGCRegion, System.Runtime.GCSettings.LatencyMode);

        await PassAsync(Quiet * 3);
        Assert.Equal(1, _trimmer.Trims); // no request since: nothing new to give back

        _idle.RequestStarted();
        _idle.RequestEnded();
        await PassAsync(Quiet - TimeSpan.FromSeconds(5));
        Assert.Equal(1, _trimmer.Trims); // not quiet long enough yet
        await PassAsync(TimeSpan.FromSeconds(10));
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 2, "the trim after a quiet spell");

        await PassAsync(Quiet * 2);
        Assert.Equal(2, _trimmer.Trims);
    }

    [Fact]
    public async Task ABurstThatGrewTheDaemon_IsTrimmedASecondAfterItsLastRequest_ASmallerOneWaitsForTheQuietSpell()
    {
        _status.SetReady();
        await _trimmer.StartAsync(CancellationToken.None);
        await _h.AdvanceWhenArmedAsync(MemoryTrimmer.AfterStart);
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 1, "the start-up trim");

        // Requests that grew the daemon by less than the bound: the next check finds them over, but no trim yet.
        Request();
        Interlocked.Add(ref _resident, (_options.TrimWhenGrownMiB - 6L) << 20);
        await PassAsync(TimeSpan.FromSeconds(5)); // the check after a trim with no request since comes after 5 s
        await StepAsync(8);
        Assert.Equal(1, _trimmer.Trims);

        // A longer burst takes it past the bound: the trim waits for the burst to end, then comes a second later.
        Interlocked.Add(ref _resident, 10L << 20);
        for (var i = 0; i < 24; i++)
        {
            Request();
            await StepAsync(1);
        }
        await StepAsync(2);
        Assert.Equal(1, _trimmer.Trims); // 750 ms after the last request
        await StepAsync(1);
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 2, "the trim a second after the burst");

        // The quiet spell's own trim still comes, once; growth counts from what the last trim left.
        await PassAsync(Quiet);
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 3, "the trim after the quiet spell");
        await PassAsync(Quiet * 2);
        Assert.Equal(3, _trimmer.Trims);
    }

    [Fact]
    public async Task AllOff_ArmsNoTimerAndTrimsNothing()
    {
        _options.TrimAfterStart = false;
        _options.TrimWhenIdle = TimeSpan.Zero;
        _options.TrimWhenGrownMiB = 0;
        StartupGc.Begin();
        _status.SetReady();

        await _trimmer.StartAsync(CancellationToken.None);

        await _trimmer.ExecuteTask!.WaitAsync(CoreHarness.Patience);
        Assert.Equal(0, _h.Time.ArmedTimers);
        Assert.Equal(0, _trimmer.Trims);
        // With no trim to pay for them, start-up's collections are not put off past ready.
        Assert.NotEqual(System.Runtime.GCLatencyMode.NoGCRegion, System.Runtime.GCSettings.LatencyMode);
    }

    [Fact]
    public async Task StoppingBeforeReady_EndsTheLoopWithoutATrim()
    {
        await _trimmer.StartAsync(CancellationToken.None);
        _status.SetStopping();

        await _trimmer.ExecuteTask!.WaitAsync(CoreHarness.Patience);
        Assert.Equal(0, _trimmer.Trims);
    }

    [Fact]
    public async Task StopAsync_EndsTheLoopBetweenChecks()
    {
        _status.SetReady();
        await _trimmer.StartAsync(CancellationToken.None);
        await _h.AdvanceWhenArmedAsync(MemoryTrimmer.AfterStart);
        await CoreHarness.WaitUntilAsync(() => _trimmer.Trims == 1 && _h.Time.ArmedTimers >= 1, "the loop waits for its next check");

        using var bound = new CancellationTokenSource(CoreHarness.Patience);
        await _trimmer.StopAsync(bound.Token);

        Assert.True(_trimmer.ExecuteTask!.IsCompletedSuccessfully, $"the loop ended {_trimmer.ExecuteTask.Status}: {_trimmer.ExecuteTask.Exception}");
        Assert.True(_h.Time.ArmedTimers == 0, $"{_h.Time.ArmedTimers} timers still armed after the stop");
    }

    [Fact]
    public void Parse_ReadsMappingsAndTheirResidentAndWrittenPages_AndOnlyCleanReadOnlyFileMappingsQualify()
    {
        const string smaps = """
            55a98af74000-55a98bcd0000 r-xp 00038000 fe:00 5514049                    /opt/virtd/virtd
            Size:              13680 kB
            Rss:               12100 kB
            Shared_Dirty:          0 kB
            Private_Dirty:         0 kB
            VmFlags: rd ex mr mw me
            55a98c5da000-55a98c5fb000 r--p 0169e000 fe:00 5514049                    /opt/virtd/virtd
            Rss:                  64 kB
            Private_Dirty:         4 kB
            55a98cab1000-55a98cb23000 rw-p 01b74000 fe:00 5514049                    /opt/virtd/virtd
            Rss:                 456 kB
            Private_Dirty:         0 kB
            7f4a61000000-7f4a61292000 rw-p 00000000 00:00 0 
            Rss:                2588 kB
            7f4a40200000-7f4a402c5000 r--p 00000000 fe:00 332131                     /usr/lib/x86_64-linux-gnu/lib crypto.so.3
            Rss:                 788 kB
            Private_Dirty:         0 kB
            7f4a50000000-7f4a50001000 r--p 00000000 fe:00 332131                     /usr/lib/small.so
            Rss:                   4 kB
            7f4a60000000-7f4a60100000 r--p 00000000 fe:00 9                          /tmp/old (deleted)
            Rss:                1024 kB
            7ffd1c5f7000-7ffd1c5f9000 r-xp 00000000 00:00 0                          [vdso]
            Rss:                   8 kB
            """;

        var all = ProcessMemory.Parse(smaps.Replace("\r\n", "\n")).ToList();

        Assert.Equal(8, all.Count);
        Assert.Equal(new ProcessMemory.Mapping(0x55a98af74000, 0x55a98bcd0000, "r-xp", "/opt/virtd/virtd", 12100 * 1024, 0), all[0]);
        Assert.Equal(4096, all[1].Dirty);
        Assert.Equal("/usr/lib/x86_64-linux-gnu/lib crypto.so.3", all[4].Path);
        Assert.Equal("", all[3].Path);
        Assert.Equal(["/opt/virtd/virtd", "/usr/lib/x86_64-linux-gnu/lib crypto.so.3"],
            all.Where(ProcessMemory.IsClean).Select(m => m.Path));
    }

    [Fact]
    public void Trim_InThisRunningProcess_GivesBackCleanFilePages_AndTheProcessGoesOn()
    {
        var before = ProcessMemory.CleanFileMappings();
        Assert.NotEmpty(before); // the runtime's and libc's code at least

        var (mappings, bytes) = ProcessMemory.Trim();

        Assert.True(mappings > 0 && bytes > 0, $"advised {mappings} mappings, {bytes} bytes");
        var residentBefore = before.Sum(m => m.Resident);
        var starts = before.Select(m => m.Start).ToHashSet();
        var residentAfter = ProcessMemory.CleanFileMappings().Where(m => starts.Contains(m.Start)).Sum(m => m.Resident);
        Assert.True(residentAfter < residentBefore, $"resident in the same mappings: {residentBefore} before, {residentAfter} after");
        // Code that ran before the trim runs after it: its pages come back from the file.
        Assert.Equal("{\"ok\":true}", System.Text.Json.JsonSerializer.Serialize(new System.Text.Json.Nodes.JsonObject { ["ok"] = true }));
    }

    public async ValueTask DisposeAsync()
    {
        _trimmer.Dispose();
        await _h.DisposeAsync();
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MemoryTrimmerCollection
{
    public const string Name = "memory trimmer";
}
