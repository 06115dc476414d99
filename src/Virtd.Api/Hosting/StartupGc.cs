using System.Runtime;

namespace Virtd.Api.Hosting;

/// <summary>
/// Start-up allocates mostly what the daemon keeps: the host's services, the definitions, every job the journal holds.
/// A collection then only copies live objects from one generation to the next, and after a busy spell (thousands of
/// jobs in the journal) those collections were a fifth of the CPU between exec and ready. So start-up runs in a no-GC
/// region of <see cref="Budget"/> bytes. Ending it at ready would only move the debt to the first requests (the first
/// collection then marks everything start-up made), so it ends a second after ready (<see cref="MemoryTrimmer.AfterStart"/>),
/// right before the start-up trim, whose full collection pays it off the request path and gives the memory back; or
/// earlier, by the runtime, once start-up and the first requests have allocated the budget.
/// </summary>
public static class StartupGc
{
    /// <summary>What start-up may allocate without a collection: 20–30 MB with a journal of a few thousand jobs.</summary>
    public const long Budget = 64L << 20;

    public static void Begin()
    {
        if (GCSettings.LatencyMode == GCLatencyMode.NoGCRegion) return; // a second host in one process (tests)
        try { GC.TryStartNoGCRegion(Budget, disallowFullBlockingGC: true); }
        catch (Exception e) when (e is InvalidOperationException or ArgumentOutOfRangeException) { }
    }

    public static void End()
    {
        if (GCSettings.LatencyMode != GCLatencyMode.NoGCRegion) return;
        try { GC.EndNoGCRegion(); }
        catch (InvalidOperationException) { } // the region ended already: start-up allocated more than the budget
    }
}
