using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Core.Domains;
using Virtd.Core.Persistence;
using Virtd.Testing;

namespace Virtd.Core.Tests.Persistence;

public sealed class DomainStoreTests : IDisposable
{
    private readonly string _root;
    private readonly string _dir;

    public DomainStoreTests()
    {
        _root = Directory.CreateTempSubdirectory("virtd-store-").FullName;
        _dir = Path.Combine(_root, "domains");
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private DomainStore NewStore() => new(_dir, NullLogger<DomainStore>.Instance);

    private static DomainDefinition Def(string name) => CoreHarness.Definition(name) with { Uuid = Guid.NewGuid() };

    private string[] FileNames() => Directory.GetFiles(_dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    private void WriteRaw(string fileName, string content)
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, fileName), content);
    }

    [Fact]
    public void SaveThenLoad_RoundTripsEveryField()
    {
        var def = new DomainDefinition
        {
            Name = "full",
            Uuid = Guid.NewGuid(),
            Driver = DriverKind.Qemu,
            Vcpus = 3,
            MemoryMiB = 384,
            Machine = MachineType.Pc,
            Boot = new BootConfig { Kernel = "/pool/vmlinuz", Initrd = "/pool/initrd", Cmdline = "console=ttyS0 quiet" },
            Disks = [new DiskConfig { Path = "/pool/a.qcow2", Format = DiskFormat.Qcow2, Bus = DiskBus.Sata, ReadOnly = true }, new DiskConfig { Path = "/pool/b.img" }],
            Nics = [new NicConfig { Mode = NicMode.None }, new NicConfig()],
            OnPoweroff = LifecycleAction.Restart,
            OnReboot = LifecycleAction.Destroy,
            OnCrash = LifecycleAction.Restart,
            Autostart = true,
            Description = "every field set, \"quoted\" and ünïcode",
            Simulation = new SimulationConfig { BootDelayMs = 5, AcpiShutdownDelayMs = 7, IgnoresAcpi = true, IgnoresSigterm = true, HangMonitor = true },
        };
        NewStore().Save(def);

        var (loaded, setAside) = NewStore().Load();

        Assert.Empty(setAside);
        var back = Assert.Single(loaded);
        Assert.True(back.SameAs(def), $"loaded {JsonSerializer.Serialize(back)}\nsaved  {JsonSerializer.Serialize(def)}");
    }

    [Fact]
    public void Save_WritesCamelCaseJsonNamedAfterTheDomain()
    {
        NewStore().Save(Def("web") with { MemoryMiB = 128 });

        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(_dir, "web.json")));
        Assert.Equal("web", doc.RootElement.GetProperty("name").GetString());
        Assert.Equal(128, doc.RootElement.GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public void Save_Repeatedly_LeavesOnlyTheFinalFileAndNoTempFiles()
    {
        var store = NewStore();
        var def = Def("web");
        for (var i = 1; i <= 20; i++) store.Save(def with { MemoryMiB = 16 * i });
        store.Save(Def("db"));

        Assert.Equal(["db.json", "web.json"], FileNames());
        Assert.Equal(320, NewStore().Load().Loaded.Single(d => d.Name == "web").MemoryMiB);
    }

    [Fact]
    public void Load_RemovesTempFilesOfAnInterruptedSaveAndKeepsTheOldDefinition()
    {
        var store = NewStore();
        var def = Def("kept");
        store.Save(def);
        WriteRaw(".kept.json.1234.0123456789abcdef.tmp", "{\"name\": \"kept\", \"mem");

        var (loaded, setAside) = NewStore().Load();

        Assert.Equal(def.Uuid, Assert.Single(loaded).Uuid);
        Assert.Empty(setAside);
        Assert.Equal(["kept.json"], FileNames());
    }

    [Fact]
    public void Delete_RemovesTheFileAndToleratesAMissingOne()
    {
        var store = NewStore();
        store.Save(Def("gone"));

        store.Delete("gone");
        store.Delete("gone");

        Assert.Empty(FileNames());
        Assert.Empty(NewStore().Load().Loaded);
    }

    [Fact]
    public void Load_WhenAFileIsCorruptOrMisnamed_SetsItAsideAndLoadsTheRest()
    {
        var store = NewStore();
        store.Save(Def("a"));
        store.Save(Def("b"));
        WriteRaw("broken.json", "{ \"name\": \"broken\", ");
        WriteRaw("wrong.json", JsonSerializer.Serialize(Def("other"), VirtdJson.Options));

        var (loaded, setAside) = NewStore().Load();

        Assert.Equal(["a", "b"], loaded.Select(d => d.Name).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(["broken.json.corrupt", "wrong.json.corrupt"], setAside.Select(q => q.File).Order(StringComparer.Ordinal).ToArray());
        Assert.Contains("does not match the domain name", setAside.Single(q => q.File == "wrong.json.corrupt").Reason);
        Assert.Equal(["a.json", "b.json", "broken.json.corrupt", "wrong.json.corrupt"], FileNames());
        // The next start loads the same two and sets nothing more aside.
        var again = NewStore().Load();
        Assert.Equal(2, again.Loaded.Count);
        Assert.Empty(again.SetAside);
    }

    [Theory]
    [InlineData("{\"name\":\"nouuid\",\"memoryMiB\":64}")]
    [InlineData("null")]
    [InlineData("{\"name\":\"nouuid\",\"memoryMiB\":64,\"unknownField\":1}")]
    [InlineData("")]
    public void Load_WhenAFileIsUnusable_SetsItAside(string content)
    {
        NewStore().Save(Def("good"));
        WriteRaw("nouuid.json", content);

        var (loaded, setAside) = NewStore().Load();

        Assert.Equal("good", Assert.Single(loaded).Name);
        Assert.Equal("nouuid.json.corrupt", Assert.Single(setAside).File);
    }

    [Fact]
    public void Load_WhenTheNameIsNull_SetsTheFileAsideInsteadOfFailing()
    {
        NewStore().Save(Def("good"));
        WriteRaw("nameless.json", $"{{\"name\":null,\"uuid\":\"{Guid.NewGuid()}\",\"memoryMiB\":64}}");

        var (loaded, setAside) = NewStore().Load();

        Assert.Equal("good", Assert.Single(loaded).Name);
        Assert.Equal("nameless.json.corrupt", Assert.Single(setAside).File);
    }

    [Fact]
    public void Load_WhenTwoFilesShareAUuid_KeepsTheFirstAndSetsTheOtherAside()
    {
        var uuid = Guid.NewGuid();
        var store = NewStore();
        store.Save(Def("a") with { Uuid = uuid });
        store.Save(Def("b") with { Uuid = uuid });

        var (loaded, setAside) = NewStore().Load();

        Assert.Equal("a", Assert.Single(loaded).Name);
        Assert.Equal("b.json.corrupt", Assert.Single(setAside).File);
    }

    [Fact]
    public void Load_WhenAnEarlierCorruptCopyExists_KeepsBothCopies()
    {
        Directory.CreateDirectory(_dir);
        WriteRaw("x.json.corrupt", "first");
        WriteRaw("x.json", "second");

        var (_, setAside) = NewStore().Load();

        Assert.Equal("x.json.corrupt.1", Assert.Single(setAside).File);
        Assert.Equal("first", File.ReadAllText(Path.Combine(_dir, "x.json.corrupt")));
        Assert.Equal("second", File.ReadAllText(Path.Combine(_dir, "x.json.corrupt.1")));
    }

    [Fact]
    public async Task ServiceLoad_RegistersStoredDomainsAsShutOff()
    {
        await using var h = new CoreHarness();
        h.Store.Save(Def("one"));
        h.Store.Save(Def("two"));
        WriteCorrupt(h.Store.Directory);

        var (count, setAside) = h.Service.Load();

        Assert.True(count == 2, string.Join(" | ", setAside.Select(q => q.File + ": " + q.Reason)));
        Assert.Single(setAside);
        Assert.Equal(DomainState.ShutOff, h.Service.Get("one").Runtime.State);
        Assert.Equal(["one", "two"], h.Registry.List().Select(d => d.Name).Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public void Load_UnknownFields_AreLoggedAndKept_TopLevelOnesWrittenBackAtTheNextSave()
    {
        var uuid = Guid.NewGuid();
        WriteRaw("future.json", $"{{\"name\":\"future\",\"uuid\":\"{uuid}\",\"memoryMiB\":64,\"tpm\":{{\"version\":\"2.0\"}},\"disks\":[]}}");
        var store = NewStore();

        var (loaded, setAside) = store.Load();
        store.Save(Assert.Single(loaded) with { MemoryMiB = 128 });

        Assert.Empty(setAside);
        var saved = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "future.json"))).RootElement;
        Assert.Equal(128, saved.GetProperty("memoryMiB").GetInt32());
        Assert.Equal("2.0", saved.GetProperty("tpm").GetProperty("version").GetString());
    }

    [Fact]
    public void Load_ANullList_IsReadAsEmpty_AndAnUnchangedSaveIsTheSame()
    {
        var uuid = Guid.NewGuid();
        WriteRaw("nulls.json", $"{{\"name\":\"nulls\",\"uuid\":\"{uuid}\",\"memoryMiB\":64,\"disks\":null,\"nics\":null}}");

        var def = Assert.Single(NewStore().Load().Loaded);

        Assert.Empty(def.Disks);
        Assert.Empty(def.Nics);
        // And a definition with a missing list compares as one with an empty list (an unchanged PUT stays a no-op).
        Assert.True((def with { Disks = null!, Nics = null! }).SameAs(def));
    }

    [Fact]
    public void Load_ADefinitionThatBreaksARule_IsSetAsideWithTheReason()
    {
        NewStore().Save(Def("good"));
        WriteRaw("huge.json", $"{{\"name\":\"huge\",\"uuid\":\"{Guid.NewGuid()}\",\"memoryMiB\":99999999}}");

        var (loaded, setAside) = NewStore().Load(new DomainDefinitionValidator(null, 4).Problem);

        Assert.Equal("good", Assert.Single(loaded).Name);
        var q = Assert.Single(setAside);
        Assert.Equal("huge.json.corrupt", q.File);
        Assert.Contains("memoryMiB", q.Reason);
    }

    private static void WriteCorrupt(string dir) => File.WriteAllText(Path.Combine(dir, "bad.json"), "{");
}
