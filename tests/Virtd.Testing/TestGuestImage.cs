
namespace Virtd.Testing;

/// <summary>
/// The bootable test guest of scripts/build-test-guest (built once per run, cached by the script): a kernel and an
/// initrd whose /init prints "virtd-test-guest: ready" on ttyS0, powers off on the ACPI button, then runs a shell there.
/// </summary>
public static class TestGuestImage
{
    public const string ReadyLine = "virtd-test-guest: ready";

    /// <summary>The kernel command line the guest boots with.</summary>
    public const string Cmdline = "console=ttyS0 quiet panic=-1";

    private static readonly Lazy<(string Kernel, string Initrd)> Built = new(Build);

    public static string Kernel => Built.Value.Kernel;
    public static string Initrd => Built.Value.Initrd;

    /// <summary>Where kernel and initrd are: make it a storage pool so definitions may name them.</summary>
    public static string Directory => Path.GetDirectoryName(Kernel)!;

    private static (string, string) Build()
    {
        var value = RepositoryFiles.RunScript(Path.Combine("scripts", "build-test-guest"), TimeSpan.FromMinutes(5));
        return Stage(value("kernel"), value("initrd"));
    }

    /// <summary>
    /// QEMU runs as virtd-qemu, which must be able to read the kernel and initrd by path (QEMU does not load
    /// them through -add-fd). The repository may sit below a directory only root can enter (a CI checkout),
    /// so the tests use a copy in a directory everyone can traverse, refreshed when the build changes.
    /// Each build has a directory of its own, named by its initrd's hash: checkouts of other branches on the same machine
    /// may build another guest, and neither may boot the other's.
    /// </summary>
    private static (string, string) Stage(string kernel, string initrd)
    {
        const string Root = "/var/tmp/virtd-test-guest";
        string hash;
        using (var stream = File.OpenRead(initrd)) hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(stream))[..16];
        var shared = Path.Combine(Root, hash);
        foreach (var dir in new[] { Root, shared })
        {
            System.IO.Directory.CreateDirectory(dir);
            File.SetUnixFileMode(dir, (UnixFileMode)0b111_101_101);
        }
        string Copy(string source)
        {
            var target = Path.Combine(shared, Path.GetFileName(source));
            var from = new FileInfo(source);
            var to = new FileInfo(target);
            if (to.Exists && to.Length == from.Length && to.LastWriteTimeUtc == from.LastWriteTimeUtc) return target;
            var temporary = $"{target}.{Environment.ProcessId}.tmp";
            File.Copy(source, temporary, overwrite: true);
            File.SetLastWriteTimeUtc(temporary, from.LastWriteTimeUtc);
            File.SetUnixFileMode(temporary, (UnixFileMode)0b110_100_100);
            File.Move(temporary, target, overwrite: true);
            return target;
        }
        return (Copy(kernel), Copy(initrd));
    }
}
