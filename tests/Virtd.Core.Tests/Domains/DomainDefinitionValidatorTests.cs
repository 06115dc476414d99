using Virtd.Core.Domains;
using Virtd.Core.Errors;

namespace Virtd.Core.Tests.Domains;

public sealed class DomainDefinitionValidatorTests : IDisposable
{
    private const int HostCpus = 4;
    private readonly string _root;
    private readonly string _pool;
    private readonly string _image;
    private readonly DomainDefinitionValidator _validator;

    public DomainDefinitionValidatorTests()
    {
        _root = Directory.CreateTempSubdirectory("virtd-validator-").FullName;
        _pool = Directory.CreateDirectory(Path.Combine(_root, "pool")).FullName;
        _image = Path.Combine(_pool, "disk.img");
        File.WriteAllBytes(_image, new byte[16]);
        _validator = new DomainDefinitionValidator(new StoragePaths([_pool]), HostCpus);
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private static DomainDefinition Valid => new()
    {
        Name = "vm",
        Uuid = Guid.NewGuid(),
        Driver = DriverKind.Simulated,
        Vcpus = 1,
        MemoryMiB = 64,
    };

    /// <summary>The error map the API would return, or an empty one when the definition is valid.</summary>
    private static IReadOnlyDictionary<string, string[]> Errors(DomainDefinitionValidator validator, DomainDefinition d)
    {
        try
        {
            validator.ValidateOrThrow(d);
            return new Dictionary<string, string[]>();
        }
        catch (VirtdException e)
        {
            Assert.Equal(ErrorCodes.ValidationFailed, e.Code);
            Assert.Equal(400, e.Status);
            Assert.NotNull(e.Errors);
            return e.Errors;
        }
    }

    private IReadOnlyDictionary<string, string[]> Errors(DomainDefinition d) => Errors(_validator, d);

    private void AssertValid(DomainDefinition d)
    {
        var errors = Errors(d);
        Assert.True(errors.Count == 0, "unexpected errors: " + string.Join("; ", errors.Select(e => $"{e.Key}: {string.Join(", ", e.Value)}")));
    }

    private void AssertOnlyKey(string key, DomainDefinition d)
    {
        var errors = Errors(d);
        Assert.Equal([key], errors.Keys.ToArray());
        Assert.NotEmpty(errors[key][0]);
    }

    [Fact]
    public void Validate_WhenDefinitionIsMinimal_Accepts() => AssertValid(Valid);

    [Theory]
    [InlineData("a")]
    [InlineData("0")]
    [InlineData("web-01.prod_a")]
    [InlineData("A1.-_")]
    public void Validate_WhenNameMatchesThePattern_Accepts(string name) => AssertValid(Valid with { Name = name });

    [Fact]
    public void Validate_WhenNameHas63Characters_Accepts() => AssertValid(Valid with { Name = new string('n', 63) });

    [Fact]
    public void Validate_WhenNameHas64Characters_RejectsName() => AssertOnlyKey("name", Valid with { Name = new string('n', 64) });

    [Theory]
    [InlineData("")]
    [InlineData("-vm")]
    [InlineData(".vm")]
    [InlineData("_vm")]
    [InlineData("vm 1")]
    [InlineData("vm/1")]
    [InlineData("../vm")]
    [InlineData("vm\u00e9")]
    [InlineData("vm\n")]
    [InlineData("vm\nother")]
    public void Validate_WhenNameBreaksThePattern_RejectsName(string name) => AssertOnlyKey("name", Valid with { Name = name });

    [Fact]
    public void Validate_WhenNameIsAUuid_RejectsName() =>
        // Such a name would shadow the domain that has that UUID in every lookup by id.
        AssertOnlyKey("name", Valid with { Name = Guid.NewGuid().ToString() });

    [Fact]
    public void Validate_WhenUuidIsNil_RejectsUuid() => AssertOnlyKey("uuid", Valid with { Uuid = Guid.Empty });

    [Theory]
    [InlineData(1)]
    [InlineData(HostCpus * 4)]
    public void Validate_WhenVcpusWithinOneToFourTimesHostCpus_Accepts(int vcpus) => AssertValid(Valid with { Vcpus = vcpus });

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(HostCpus * 4 + 1)]
    public void Validate_WhenVcpusOutOfRange_RejectsVcpus(int vcpus) => AssertOnlyKey("vcpus", Valid with { Vcpus = vcpus });

    [Fact]
    public void Validate_WhenHostIsLarge_CapsVcpusAt256()
    {
        var big = new DomainDefinitionValidator(new StoragePaths([_pool]), hostCpus: 100);
        Assert.Empty(Errors(big, Valid with { Vcpus = 256 }));
        Assert.Equal(["vcpus"], Errors(big, Valid with { Vcpus = 257 }).Keys.ToArray());
    }

    [Theory]
    [InlineData(16)]
    [InlineData(1_048_576)]
    public void Validate_WhenMemoryWithinBounds_Accepts(int mib) => AssertValid(Valid with { MemoryMiB = mib });

    [Theory]
    [InlineData(0)]
    [InlineData(15)]
    [InlineData(1_048_577)]
    public void Validate_WhenMemoryOutOfBounds_RejectsMemoryMiB(int mib) => AssertOnlyKey("memoryMiB", Valid with { MemoryMiB = mib });

    [Theory]
    [InlineData(0)]
    [InlineData(600_000)]
    public void Validate_WhenSimulationDelaysWithinBounds_Accepts(int ms) =>
        AssertValid(Valid with { Simulation = new SimulationConfig { BootDelayMs = ms, AcpiShutdownDelayMs = ms } });

    [Theory]
    [InlineData(-1)]
    [InlineData(600_001)]
    public void Validate_WhenBootDelayOutOfBounds_RejectsSimulationBootDelayMs(int ms) =>
        AssertOnlyKey("simulation.bootDelayMs", Valid with { Simulation = new SimulationConfig { BootDelayMs = ms } });

    [Theory]
    [InlineData(-1)]
    [InlineData(600_001)]
    public void Validate_WhenAcpiDelayOutOfBounds_RejectsSimulationAcpiShutdownDelayMs(int ms) =>
        AssertOnlyKey("simulation.acpiShutdownDelayMs", Valid with { Simulation = new SimulationConfig { AcpiShutdownDelayMs = ms } });

    [Fact]
    public void Validate_WhenDescriptionHas4096Characters_Accepts() => AssertValid(Valid with { Description = new string('d', 4096) });

    [Fact]
    public void Validate_WhenDescriptionHas4097Characters_RejectsDescription() =>
        AssertOnlyKey("description", Valid with { Description = new string('d', 4097) });

    [Fact]
    public void Validate_When32Disks_Accepts() => AssertValid(Valid with { Disks = Disks(32) });

    [Fact]
    public void Validate_When33Disks_RejectsDisks() => AssertOnlyKey("disks", Valid with { Disks = Disks(33) });

    [Fact]
    public void Validate_When16Nics_Accepts() => AssertValid(Valid with { Nics = Nics(16) });

    [Fact]
    public void Validate_When17Nics_RejectsNics() => AssertOnlyKey("nics", Valid with { Nics = Nics(17) });

    [Fact]
    public void Validate_WhenSecondDiskPathIsBad_KeysTheErrorByItsJsonPath()
    {
        var d = Valid with { Disks = [new DiskConfig { Path = _image }, new DiskConfig { Path = Path.Combine(_pool, "missing.img") }] };

        var errors = Errors(d);

        Assert.Equal(["disks[1].path"], errors.Keys.ToArray());
        Assert.Contains("does not exist", errors["disks[1].path"][0], StringComparison.Ordinal);
    }

    [Fact]
    public void Validate_WhenDiskEnumValueIsUnknown_KeysTheErrorByItsJsonPath() =>
        AssertOnlyKey("disks[0].format", Valid with { Disks = [new DiskConfig { Path = _image, Format = (DiskFormat)42 }] });

    [Fact]
    public void Validate_WhenDiskEntryIsNull_RejectsThatEntry() =>
        AssertOnlyKey("disks[0]", Valid with { Disks = [null!] });

    [Fact]
    public void Validate_WhenMachineIsUnknown_RejectsMachine() => AssertOnlyKey("machine", Valid with { Machine = (MachineType)9 });

    [Fact]
    public void Validate_WhenANullableOrNestedEnumIsUnknown_RejectsThatField()
    {
        AssertOnlyKey("driver", Valid with { Driver = (DriverKind)7 });
        AssertOnlyKey("onCrash", Valid with { OnCrash = (LifecycleAction)5 });
        AssertValid(Valid with { Driver = null });
    }

    [Fact]
    public void Validate_WhenKernelIsOutsideThePools_RejectsBootKernel() =>
        AssertOnlyKey("boot.kernel", Valid with { Boot = new BootConfig { Kernel = "/etc/hostname" } });

    [Fact]
    public void Validate_WhenInitrdIsMissing_RejectsBootInitrd() =>
        AssertOnlyKey("boot.initrd", Valid with { Boot = new BootConfig { Kernel = _image, Initrd = Path.Combine(_pool, "nope") } });

    [Fact]
    public void Validate_WhenCmdlineGivenWithoutKernel_RejectsBootKernel() =>
        AssertOnlyKey("boot.kernel", Valid with { Boot = new BootConfig { Cmdline = "console=ttyS0" } });

    [Fact]
    public void Validate_WhenKernelBootIsComplete_Accepts() =>
        AssertValid(Valid with { Boot = new BootConfig { Kernel = _image, Initrd = _image, Cmdline = new string('c', 4096) } });

    [Fact]
    public void Validate_WhenCmdlineHas4097Characters_RejectsBootCmdline() =>
        AssertOnlyKey("boot.cmdline", Valid with { Boot = new BootConfig { Kernel = _image, Cmdline = new string('c', 4097) } });

    [Fact]
    public void Validate_WhenSeveralFieldsAreBad_ReportsEveryField()
    {
        var d = Valid with { Name = "-", Vcpus = 0, MemoryMiB = 1, Disks = [new DiskConfig { Path = "relative.img" }] };

        var errors = Errors(d);

        Assert.Equal(["disks[0].path", "memoryMiB", "name", "vcpus"], errors.Keys.Order(StringComparer.Ordinal).ToArray());
    }

    private DiskConfig[] Disks(int n) => Enumerable.Range(0, n).Select(_ => new DiskConfig { Path = _image, ReadOnly = true }).ToArray();

    private static NicConfig[] Nics(int n) => Enumerable.Range(0, n).Select(_ => new NicConfig()).ToArray();
}
