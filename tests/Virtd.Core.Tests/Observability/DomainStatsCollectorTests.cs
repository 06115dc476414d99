using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Observability;
using Virtd.Testing;

namespace Virtd.Core.Tests.Observability;

/// <summary>The background reader of VM figures, on a manual clock: a hung VM keeps its last figures, marked stale.</summary>
public sealed class DomainStatsCollectorTests
{
    private static readonly MetricsOptions Options = new() { StatsInterval = TimeSpan.FromSeconds(5), StatsTimeout = TimeSpan.FromSeconds(2) };

    [Fact]
    public async Task AHungVm_KeepsItsLastFiguresMarkedStale_AndIsFreshAgainOnceItAnswers()
    {
        var time = new FakeClock();
        var registry = new DomainRegistry();
        var bus = new EventBus(new EventsOptions(), time);
        var definition = new DomainDefinition { Name = "vm", Uuid = Guid.NewGuid(), MemoryMiB = 64 };
        var domain = new DomainObject(definition, new RuntimeState(DomainState.ShutOff, "defined", time.GetUtcNow()), bus);
        Assert.True(registry.TryReserve(domain, out _));
        DomainRegistry.Commit(domain);
        var vm = new FakeVm();
        domain.Attach(vm, definition, DomainState.Running, "booted", "started", time.GetUtcNow());
        using var collector = new DomainStatsCollector(registry, Options, time, NullLogger<DomainStatsCollector>.Instance);

        await collector.StartAsync(CancellationToken.None);
        await CoreHarness.WaitUntilAsync(() => collector.Find(domain.Uuid)?.Stats is not null, "the first reading");
        var first = collector.Find(domain.Uuid)!;
        Assert.False(first.Stale);
        Assert.Equal(1, first.Stats!.VcpuSeconds);

        // The reading is visible a moment before its read has ended: a round that came in between would find the read
        // still pending and mark it stale instead of starting the second one.
        await CoreHarness.WaitUntilAsync(() => collector.PendingReads == 0, "the first read to end");
        vm.Hang = true;
        time.Advance(Options.StatsInterval);
        await CoreHarness.WaitUntilAsync(() => vm.Reads == 2, "the second read to begin");
        time.Advance(Options.StatsTimeout);
        await CoreHarness.WaitUntilAsync(() => collector.Find(domain.Uuid)!.Stale, "the hung VM to be marked stale");
        Assert.Equal(first.Stats, collector.Find(domain.Uuid)!.Stats);
        Assert.Equal(first.ReadAt, collector.Find(domain.Uuid)!.ReadAt);

        await CoreHarness.WaitUntilAsync(() => collector.PendingReads == 0, "the hung read to end at its deadline");
        vm.Hang = false;
        time.Advance(Options.StatsInterval);
        await CoreHarness.WaitUntilAsync(() => collector.Find(domain.Uuid) is { Stale: false, Stats.VcpuSeconds: 3 }, "a fresh reading");

        domain.Detach(vm, DomainState.ShutOff, "destroyed", "destroyed", time.GetUtcNow());
        time.Advance(Options.StatsInterval);
        await CoreHarness.WaitUntilAsync(() => collector.Find(domain.Uuid) is null, "the stopped VM's figures to go");

        vm.Hang = true; // a read pending at stop ends with the stop
        await collector.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
    }

    private sealed class FakeVm : IVmInstance
    {
        private int _reads;
        public volatile bool Hang;
        public int Reads => Volatile.Read(ref _reads);
        public int Pid => 4242;
        public Task<VmExit> Exited => new TaskCompletionSource<VmExit>().Task;
        public void Signal(VmSignal signal) { }
        public Task PauseAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task ResumeAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task ResetAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task PowerdownAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task RebootAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public async Task<VmStats> ReadStatsAsync(CancellationToken cancellationToken)
        {
            var n = Interlocked.Increment(ref _reads);
            if (Hang) await Task.Delay(Timeout.Infinite, cancellationToken);
            return new VmStats(n, 1000, 2000, [new DiskStats("disk0", n * 512, 0, n, 0, 0, 0)]);
        }
    }
}
