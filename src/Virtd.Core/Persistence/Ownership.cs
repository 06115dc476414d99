using System.Runtime.InteropServices;

namespace Virtd.Core.Persistence;

/// <summary>Who owns a file, and who the daemon is: what deciding on file modes needs.</summary>
public static unsafe class Ownership
{
    /// <summary>0711: others may pass through to a file they were given by name, but not list.</summary>
    public const UnixFileMode Traversable = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
        | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;

    /// <summary>0700.</summary>
    public const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    /// <summary>0755.</summary>
    public const UnixFileMode Public = Private | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute;

    public static uint EffectiveUid => geteuid();

    /// <summary>The owner's uid (links followed), or null when the path cannot be read.</summary>
    public static uint? OwnerOf(string path)
    {
        var buf = stackalloc byte[256];
        if (statx(-100 /* AT_FDCWD */, path, 0, 0x7ff, buf) != 0) return null;
        return *(uint*)(buf + 20);
    }

    /// <summary>
    /// Sets <paramref name="mode"/> on a directory the daemon owns, whatever it was created with (a state directory
    /// made by <c>mktemp -d</c> is 0700). One the daemon does not own is left as it is; false then.
    /// </summary>
    public static bool SetDirectoryMode(string path, UnixFileMode mode)
    {
        Directory.CreateDirectory(path);
        if (OwnerOf(path) != EffectiveUid) return false;
        if (File.GetUnixFileMode(path) != mode) File.SetUnixFileMode(path, mode);
        return true;
    }

    [DllImport("libc")] private static extern uint geteuid();
    [DllImport("libc", SetLastError = true)] private static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, void* buf);
}
