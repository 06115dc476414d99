using Virtd.Core.Domains;
using Virtd.Core.Errors;

namespace Virtd.Core.Tests.Domains;

/// <summary>Every disk, kernel and initrd must resolve, links followed, to a file inside a storage pool.</summary>
public sealed class StoragePathsTests : IDisposable
{
    private readonly string _root;
    private readonly string _pool;
    private readonly string _outside;
    private readonly StoragePaths _paths;

    public StoragePathsTests()
    {
        _root = Directory.CreateTempSubdirectory("virtd-paths-").FullName;
        _pool = Directory.CreateDirectory(Path.Combine(_root, "pool")).FullName;
        _outside = Directory.CreateDirectory(Path.Combine(_root, "outside")).FullName;
        _paths = new StoragePaths([_pool]);
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string File(string dir, string name)
    {
        var path = Path.Combine(dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        System.IO.File.WriteAllBytes(path, new byte[8]);
        return path;
    }

    /// <summary>What a define with this disk path gets back for <c>disks[0].path</c>, or null when accepted.</summary>
    private string? DiskError(StoragePaths paths, string path)
    {
        var validator = new DomainDefinitionValidator(paths, 4);
        var d = new DomainDefinition { Name = "vm", Uuid = Guid.NewGuid(), MemoryMiB = 64, Disks = [new DiskConfig { Path = path }] };
        try
        {
            validator.ValidateOrThrow(d);
            return null;
        }
        catch (VirtdException e)
        {
            Assert.Equal(["disks[0].path"], e.Errors!.Keys.ToArray());
            return e.Errors["disks[0].path"][0];
        }
    }

    [Fact]
    public void Check_WhenFileIsInsideThePool_Accepts()
    {
        Assert.Null(DiskError(_paths, File(_pool, "a.img")));
        Assert.Null(DiskError(_paths, File(_pool, "sub/dir/b.qcow2")));
    }

    [Fact]
    public void Check_WhenFileIsMissing_Rejects()
    {
        var error = DiskError(_paths, Path.Combine(_pool, "missing.img"));
        Assert.Contains("does not exist", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Check_WhenPathIsADirectory_Rejects()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_pool, "dir")).FullName;
        Assert.Contains("is a directory", DiskError(_paths, dir), StringComparison.Ordinal);
        Assert.NotNull(DiskError(_paths, _pool));
    }

    [Fact]
    public void Check_WhenPathIsRelative_Rejects()
    {
        File(_pool, "a.img");
        Assert.Contains("absolute", DiskError(_paths, "pool/a.img"), StringComparison.Ordinal);
        Assert.Contains("absolute", DiskError(_paths, "a.img"), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_WhenPathIsEmpty_Rejects() => Assert.NotNull(DiskError(_paths, ""));

    [Fact]
    public void Check_WhenPathEscapesThroughDotDot_Rejects()
    {
        File(_outside, "secret.img");
        var error = DiskError(_paths, _pool + "/../outside/secret.img");
        Assert.Contains("is not a file inside a storage pool", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Check_WhenDotDotStaysInsideThePool_Accepts()
    {
        File(_pool, "a.img");
        Directory.CreateDirectory(Path.Combine(_pool, "sub"));
        Assert.Null(DiskError(_paths, _pool + "/sub/../a.img"));
    }

    [Fact]
    public void Check_WhenSymlinkInsideThePoolPointsOutside_Rejects()
    {
        var secret = File(_outside, "secret.img");
        var link = Path.Combine(_pool, "innocent.img");
        System.IO.File.CreateSymbolicLink(link, secret);

        var error = DiskError(_paths, link);

        Assert.Contains("is not a file inside a storage pool", error, StringComparison.Ordinal);
        Assert.DoesNotContain(secret, error, StringComparison.Ordinal); // where the link leads is not told
        var missing = Path.Combine(_outside, "no-such.img"); // the same words as for a path outside that does not exist
        Assert.Equal(DiskError(_paths, missing)!.Replace(missing, link, StringComparison.Ordinal), error);
    }

    [Fact]
    public void Check_WhenDirectorySymlinkInsideThePoolPointsOutside_Rejects()
    {
        File(_outside, "secret.img");
        Directory.CreateSymbolicLink(Path.Combine(_pool, "escape"), _outside);

        Assert.Contains("is not a file inside a storage pool", DiskError(_paths, Path.Combine(_pool, "escape", "secret.img")), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_WhenSymlinkInsideThePoolPointsInside_Accepts()
    {
        var target = File(_pool, "real.img");
        var link = Path.Combine(_pool, "alias.img");
        System.IO.File.CreateSymbolicLink(link, target);

        Assert.Null(DiskError(_paths, link));
    }

    [Fact]
    public void Check_WhenPoolIsReachedThroughASymlink_AcceptsItsFilesByEitherPath()
    {
        var image = File(_pool, "a.img");
        var poolLink = Path.Combine(_root, "pool-link");
        Directory.CreateSymbolicLink(poolLink, _pool);
        var paths = new StoragePaths([poolLink]);

        Assert.Null(DiskError(paths, Path.Combine(poolLink, "a.img")));
        Assert.Null(DiskError(paths, image));
        Assert.NotNull(DiskError(paths, File(_outside, "b.img")));
    }

    [Fact]
    public void Check_WhenFileIsInASiblingDirectoryWithThePoolAsPrefix_Rejects()
    {
        var sibling = Directory.CreateDirectory(_pool + "2").FullName;
        Assert.Contains("is not a file inside a storage pool", DiskError(_paths, File(sibling, "a.img")), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_WhenSeveralPools_AcceptsAFileInAnyOfThem()
    {
        var second = Directory.CreateDirectory(Path.Combine(_root, "pool-b")).FullName;
        var paths = new StoragePaths([_pool, second]);

        Assert.Null(DiskError(paths, File(second, "b.img")));
        Assert.Null(DiskError(paths, File(_pool, "a.img")));
    }
}
