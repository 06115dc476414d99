using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Events;
using Virtd.Testing;

namespace Virtd.Core.Tests.Domains;

public sealed class DomainRegistryTests
{
    private const int Racers = 32;

    [Fact]
    public async Task Define_WhenManyDefineTheSameNameAtOnce_ExactlyOneWinsAndTheRestGetDomainExists()
    {
        await using var h = new CoreHarness();
        using var go = new ManualResetEventSlim();
        var attempts = Enumerable.Range(0, Racers).Select(_ => Task.Run(async () =>
        {
            go.Wait();
            return await h.Service.DefineAsync(CoreHarness.Definition("web"), CancellationToken.None);
        })).ToList();
        go.Set();

        var outcomes = await Outcomes(attempts);

        Assert.Single(outcomes.Winners);
        Assert.Equal(Racers - 1, outcomes.Failures.Count);
        Assert.All(outcomes.Failures, e =>
        {
            Assert.Equal(ErrorCodes.DomainExists, e.Code);
            Assert.Equal(409, e.Status);
        });
        Assert.Same(outcomes.Winners[0], h.Registry.Find("web"));
        Assert.Equal(1, h.Registry.Count);
        Assert.Single(h.Store.Load().Loaded);
    }

    [Fact]
    public async Task Define_WhenManyDefineTheSameUuidAtOnce_ExactlyOneWinsAndTheRestGetDomainExists()
    {
        await using var h = new CoreHarness();
        var uuid = Guid.NewGuid();
        using var go = new ManualResetEventSlim();
        var attempts = Enumerable.Range(0, Racers).Select(i => Task.Run(async () =>
        {
            go.Wait();
            return await h.Service.DefineAsync(CoreHarness.Definition($"vm{i}") with { Uuid = uuid }, CancellationToken.None);
        })).ToList();
        go.Set();

        var outcomes = await Outcomes(attempts);

        var winner = Assert.Single(outcomes.Winners);
        Assert.Equal(Racers - 1, outcomes.Failures.Count);
        Assert.All(outcomes.Failures, e =>
        {
            Assert.Equal(ErrorCodes.DomainExists, e.Code);
            Assert.Contains(uuid.ToString(), e.Detail, StringComparison.Ordinal);
        });
        Assert.Same(winner, h.Registry.Find(uuid.ToString()));
        Assert.Single(h.Registry.List());
    }

    [Fact]
    public async Task Define_WhenNameIsTaken_FailsDomainExistsAndKeepsTheFirstDefinition()
    {
        await using var h = new CoreHarness();
        var first = await h.DefineAsync("db", edit: d => d with { MemoryMiB = 128 });

        var e = await Assert.ThrowsAsync<VirtdException>(() => h.DefineAsync("db", edit: d => d with { MemoryMiB = 256 }));

        Assert.Equal(ErrorCodes.DomainExists, e.Code);
        Assert.Same(first, h.Registry.Find("db"));
        Assert.Equal(128, h.Registry.Find("db")!.Definition.MemoryMiB);
    }

    [Fact]
    public void Find_WhenDomainIsReservedButNotCommitted_DoesNotSeeIt()
    {
        var registry = new DomainRegistry();
        var d = NewDomain("pending");

        Assert.True(registry.TryReserve(d, out _));

        Assert.Null(registry.Find("pending"));
        Assert.Null(registry.Find(d.Uuid.ToString()));
        Assert.Empty(registry.List());
        // The slot is still taken: a second define of the same name fails at once.
        Assert.False(registry.TryReserve(NewDomain("pending"), out var conflict));
        Assert.Same(d, conflict);

        DomainRegistry.Commit(d);
        Assert.Same(d, registry.Find("pending"));
        Assert.Same(d, Assert.Single(registry.List()));
    }

    [Fact]
    public void Remove_FreesTheNameAndUuidForANewDomain()
    {
        var registry = new DomainRegistry();
        var old = NewDomain("reuse");
        Assert.True(registry.TryReserve(old, out _));
        DomainRegistry.Commit(old);

        registry.Remove(old);

        Assert.Null(registry.Find("reuse"));
        Assert.Null(registry.Find(old.Uuid.ToString()));
        Assert.True(old.Removed);
        var again = NewDomain("reuse", old.Uuid);
        Assert.True(registry.TryReserve(again, out var conflict), $"slot still held by {conflict}");
        DomainRegistry.Commit(again);
        Assert.Same(again, registry.Find("reuse"));
        // Removing the old object again must not take the new one's slot.
        registry.Remove(old);
        Assert.Same(again, registry.Find("reuse"));
    }

    [Fact]
    public async Task Undefine_FreesTheNameSoItCanBeDefinedAgain()
    {
        await using var h = new CoreHarness();
        var old = await h.DefineAsync("again");

        await h.Service.UndefineAsync("again", null, CancellationToken.None);

        Assert.Null(h.Registry.Find("again"));
        Assert.False(File.Exists(h.Store.PathOf("again")));
        var redefined = await h.DefineAsync("again");
        Assert.NotSame(old, redefined);
        Assert.Same(redefined, h.Service.Get("again"));
    }

    [Fact]
    public async Task Define_WhenSavingFails_FreesTheReservedName()
    {
        await using var h = new CoreHarness();
        // The domains directory cannot be created: a file is in its way.
        File.WriteAllText(h.Store.Directory, "not a directory");

        await Assert.ThrowsAnyAsync<IOException>(() => h.DefineAsync("unlucky"));
        Assert.Null(h.Registry.Find("unlucky"));
        Assert.Equal(0, h.Registry.Count);

        File.Delete(h.Store.Directory);
        var d = await h.DefineAsync("unlucky");
        Assert.Same(d, h.Registry.Find("unlucky"));
    }

    [Fact]
    public async Task Find_LooksUpByNameAndByUuid()
    {
        await using var h = new CoreHarness();
        var a = await h.DefineAsync("alpha");
        var b = await h.DefineAsync("beta");

        Assert.Same(a, h.Registry.Find("alpha"));
        Assert.Same(b, h.Registry.Find(b.Uuid.ToString()));
        Assert.Same(b, h.Registry.Find(b.Uuid.ToString("D").ToUpperInvariant()));
        Assert.Null(h.Registry.Find("Alpha")); // names are case-sensitive
        Assert.Null(h.Registry.Find(Guid.NewGuid().ToString()));
        var e = Assert.Throws<VirtdException>(() => h.Service.Get("gamma"));
        Assert.Equal(ErrorCodes.DomainNotFound, e.Code);
        Assert.Equal(404, e.Status);
    }

    private static DomainObject NewDomain(string name, Guid? uuid = null) =>
        new(CoreHarness.Definition(name) with { Uuid = uuid ?? Guid.NewGuid() },
            new RuntimeState(DomainState.ShutOff, StateReasons.Defined, DateTimeOffset.UnixEpoch),
            new EventBus(new EventsOptions(), TimeProvider.System));

    private static async Task<(List<DomainObject> Winners, List<VirtdException> Failures)> Outcomes(List<Task<DomainObject>> attempts)
    {
        try { await Task.WhenAll(attempts).WaitAsync(CoreHarness.Patience); }
        catch (VirtdException) { /* inspected below */ }
        var winners = attempts.Where(t => t.IsCompletedSuccessfully).Select(t => t.Result).ToList();
        var failures = attempts.Where(t => t.IsFaulted).Select(t => Assert.IsType<VirtdException>(t.Exception!.InnerException)).ToList();
        return (winners, failures);
    }
}
