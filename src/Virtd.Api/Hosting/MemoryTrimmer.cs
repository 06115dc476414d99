using System.Diagnostics;
using Virtd.Core.Observability;

namespace Virtd.Api.Hosting;

/// <summary>Configuration section <c>Memory</c>: when the daemon gives back memory it no longer uses.</summary>
public sealed class MemoryOptions
{
    /// <summary>
    /// A second after the daemon is ready: collect what start-up allocated and give back the pages only start-up touched
    /// (see <see cref="MemoryTrimmer"/>).
    /// </summary>
    public bool TrimAfterStart { get; set; } = true;

    /// <summary>
    /// After activity, once no request has started or ended for this long: the same trim, once per quiet spell. An open
    /// event stream does not count as activity. <c>00:00:00</c> never trims when idle.
    /// </summary>
    public TimeSpan TrimWhenIdle { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Once requests have made the daemon's resident memory this many MiB larger than the last trim left it, the
    /// trim does not wait for <see cref="TrimWhenIdle"/>: it runs as soon as no request has started or ended for
    /// <see cref="MemoryTrimmer.AfterBurst"/>. A burst of work then costs its memory only while it lasts. The idle
    /// trim still follows the quiet spell. <c>0</c> never trims for growth.
    /// </summary>
    public int TrimWhenGrownMiB { get; set; } = 16;

    public List<string> Validate()
    {
        var errors = new List<string>();
        if (TrimWhenIdle < TimeSpan.Zero || TimeSpan.FromDays(1) < TrimWhenIdle)
            errors.Add("Memory:TrimWhenIdle: must be between 00:00:00 (never) and 1.00:00:00");
        if (TrimWhenGrownMiB is < 0 or > 1 << 20)
            errors.Add("Memory:TrimWhenGrownMiB: must be between 0 (never) and 1048576");
        return errors;
    }
}

/// <summary>
/// Gives memory back to the host the daemon shares with its VMs, the way the kernel frees its init sections after
/// boot: start-up allocates tens of megabytes it then drops, and runs code (configuration binding, dependency
/// injection, the OpenAPI and metrics set-up) that no request runs again. A trim is one full, compacting garbage
/// collection that returns free heap to the system (<see cref="GCCollectionMode.Aggressive"/>), then
/// <c>madvise(MADV_DONTNEED)</c> over the clean read-only file mappings (the binary's code and read-only data, shared
/// libraries): their pages stay in the page cache, and a page touched again comes back by a minor fault. Mappings
/// with a written page are left alone, so nothing but residency changes. Runs after start
/// (<see cref="MemoryOptions.TrimAfterStart"/>), after a quiet spell (<see cref="MemoryOptions.TrimWhenIdle"/>), and
/// a second after a burst of requests that grew the daemon (<see cref="MemoryOptions.TrimWhenGrownMiB"/>); a hosted
/// service, awaited at stop.
/// </summary>
public sealed class MemoryTrimmer(MemoryOptions options, IdleMonitor idle, DaemonStatus status, TimeProvider time, ILogger<MemoryTrimmer> log)
    : BackgroundService
{
    /// <summary>How long after readiness the start-up trim runs: the first requests of a starting client go first.</summary>
    public static readonly TimeSpan AfterStart = TimeSpan.FromSeconds(1);

    /// <summary>How long requests must have stopped before a trim for growth (<see cref="MemoryOptions.TrimWhenGrownMiB"/>).</summary>
    public static readonly TimeSpan AfterBurst = TimeSpan.FromSeconds(1);

    /// <summary>Time between checks while requests come (a quarter of <see cref="AfterBurst"/>): the trim follows a burst closely.</summary>
    public static readonly TimeSpan BurstCheck = AfterBurst / 4;

    /// <summary>Trims done so far (for tests and the log).</summary>
    public int Trims => Volatile.Read(ref _trims);

    /// <summary>The daemon's resident bytes (tests give their own).</summary>
    public Func<long> ResidentBytes { get; init; } = static () => ProcessMemory.ResidentBytes() ?? 0;

    private int _trims;
    private long _residentAfterTrim;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var check = TimeSpan.FromTicks(Math.Clamp(options.TrimWhenIdle.Ticks / 4, TimeSpan.TicksPerSecond, TimeSpan.TicksPerSecond * 5));
        var idleTrims = options.TrimWhenIdle > TimeSpan.Zero;
        var grown = (long)options.TrimWhenGrownMiB << 20;
        try
        {
            var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void Changed(DaemonState state) { if (state == DaemonState.Ready) ready.TrySetResult(); else ready.TrySetCanceled(CancellationToken.None); }
            status.Changed += Changed;
            try
            {
                if (status.State != DaemonState.Starting) Changed(status.State);
                await ready.Task.WaitAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (TaskCanceledException) when (!stoppingToken.IsCancellationRequested) { return; } // stopping before ready
            finally { status.Changed -= Changed; }
            if (!options.TrimAfterStart && !idleTrims && grown == 0)
            {
                StartupGc.End(); // no trim to take start-up's collections: they are not put off past ready
                return;
            }
            await Task.Delay(AfterStart, time, stoppingToken).ConfigureAwait(false);
            // Activity before this point is start-up's: only what comes after it makes a quiet spell worth a trim.
            var trimmedAt = idle.LastActivity;
            // Start-up's collections were put off until now (StartupGc): the trim's own collection takes them.
            StartupGc.End();
            if (options.TrimAfterStart) Trim("start");
            else _residentAfterTrim = ResidentBytes();
            if (!idleTrims && grown == 0) return;
            // The activity whose burst was looked at for growth once it had ended: a burst is looked at once.
            var settled = trimmedAt;
            while (!stoppingToken.IsCancellationRequested && status.State == DaemonState.Ready)
            {
                // Checked often only while a burst that has not been looked at may be ending; a daemon nobody talks to
                // wakes rarely, so a burst shorter than a check interval is looked at by the next one.
                var fast = grown > 0 && idle.LastActivity != settled;
                await Task.Delay(fast ? BurstCheck : check, time, stoppingToken).ConfigureAwait(false);
                var last = idle.LastActivity;
                var quiet = idle.IdleFor;
                if (idleTrims && last != trimmedAt && quiet >= options.TrimWhenIdle)
                {
                    trimmedAt = settled = last;
                    Trim("idle");
                }
                else if (grown > 0 && last != settled && quiet >= AfterBurst)
                {
                    settled = last;
                    if (ResidentBytes() - _residentAfterTrim >= grown) Trim("grown");
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The daemon is stopping.
        }
    }

    private void Trim(string why)
    {
        var before = ResidentBytes();
        var sw = Stopwatch.StartNew();
        var (mappings, advised) = ProcessMemory.Trim();
        _residentAfterTrim = ResidentBytes();
        Interlocked.Increment(ref _trims);
        log.LogInformation("memory trim ({Why}): RSS {Before:0.0} → {After:0.0} MiB in {Ms:0.0} ms ({Mappings} clean file mappings, {Advised:0.0} MiB, advised)",
            why, before / 1048576.0, _residentAfterTrim / 1048576.0, sw.Elapsed.TotalMilliseconds, mappings, advised / 1048576.0);
    }
}
