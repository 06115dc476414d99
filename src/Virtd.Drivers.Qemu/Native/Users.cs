using System.Runtime.InteropServices;

namespace Virtd.Drivers.Qemu.Native;

/// <summary>A user as the password database has it.</summary>
internal readonly record struct UserIds(string Name, uint Uid, uint Gid);

/// <summary>Which file this is and whether it changed: device, inode, size, change and modification times.</summary>
internal readonly record struct FileIdentity(ulong Device, ulong Inode, ulong Size, long ChangedNs, long ModifiedNs);

/// <summary>What a file's owner and mode are (statx: one layout on every architecture).</summary>
internal readonly record struct FileOwner(uint Uid, uint Gid, UnixFileMode Mode, bool IsDirectory);

internal static unsafe class Users
{
    /// <summary>The daemon's effective uid.</summary>
    public static uint EffectiveUid => geteuid();

    /// <summary>getpwnam_r: the user's uid and primary gid, or null when there is no such user.</summary>
    public static UserIds? Find(string name)
    {
        var pwd = stackalloc byte[64]; // struct passwd: 7 fields, 48 bytes on 64-bit
        var buffer = new byte[16 * 1024];
        nint result;
        fixed (byte* b = buffer)
        {
            var rc = getpwnam_r(name, pwd, b, (nuint)buffer.Length, &result);
            if (rc != 0 || result == 0) return null;
        }
        // struct passwd { char *pw_name; char *pw_passwd; uid_t pw_uid; gid_t pw_gid; ... }
        return new UserIds(name, *(uint*)(pwd + 16), *(uint*)(pwd + 20));
    }

    /// <summary>The name of a uid, or null.</summary>
    public static string? NameOf(uint uid)
    {
        var pwd = stackalloc byte[64];
        var buffer = new byte[16 * 1024];
        nint result;
        fixed (byte* b = buffer)
        {
            if (getpwuid_r(uid, pwd, b, (nuint)buffer.Length, &result) != 0 || result == 0) return null;
        }
        return Marshal.PtrToStringUTF8(*(nint*)pwd);
    }

    /// <summary>Owner, group and mode of <paramref name="path"/> (links followed), or null when it cannot be read.</summary>
    public static FileOwner? Stat(string path)
    {
        var buf = stackalloc byte[256]; // struct statx is 256 bytes
        const int AT_FDCWD = -100;
        const uint STATX_BASIC_STATS = 0x7ff;
        if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, buf) != 0) return null;
        var uid = *(uint*)(buf + 20);
        var gid = *(uint*)(buf + 24);
        var mode = *(ushort*)(buf + 28);
        return new FileOwner(uid, gid, (UnixFileMode)(mode & 0xfff), (mode & 0xf000) == 0x4000);
    }

    /// <summary>Bytes the file takes on its filesystem (statx stx_blocks × 512), or null.</summary>
    public static long? Allocated(string path)
    {
        var buf = stackalloc byte[256];
        if (statx(-100 /* AT_FDCWD */, path, 0, 0x400 /* STATX_BLOCKS */, buf) != 0) return null;
        return (long)(*(ulong*)(buf + 48) * 512);
    }

    /// <summary>The identity of the file at <paramref name="path"/> (links followed), or null.</summary>
    public static FileIdentity? Identify(string path) => Identify(-100 /* AT_FDCWD */, path, 0);

    /// <summary>The identity of an open file.</summary>
    public static FileIdentity? Identify(Microsoft.Win32.SafeHandles.SafeFileHandle handle) =>
        Identify((int)handle.DangerousGetHandle(), "", 0x1000 /* AT_EMPTY_PATH */);

    private static FileIdentity? Identify(int dirfd, string path, int flags)
    {
        var buf = stackalloc byte[256];
        if (statx(dirfd, path, flags, 0x7ff, buf) != 0) return null;
        static long Ns(byte* t) => *(long*)t * 1_000_000_000L + *(uint*)(t + 8);
        var device = ((ulong)*(uint*)(buf + 136) << 32) | *(uint*)(buf + 140);
        return new FileIdentity(device, *(ulong*)(buf + 32), *(ulong*)(buf + 40), Ns(buf + 96), Ns(buf + 112));
    }

    /// <summary>
    /// Whether <paramref name="user"/> (with no supplementary groups, as QEMU runs) can read the file at
    /// <paramref name="path"/>: search permission on every directory above it and read permission on the file.
    /// Mode bits only (ACLs are not consulted).
    /// </summary>
    public static bool CanRead(UserIds user, string path)
    {
        if (user.Uid == 0) return true;
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full);
        var dirs = new List<string>();
        for (; dir is not null; dir = Path.GetDirectoryName(dir)) dirs.Add(dir);
        foreach (var d in dirs)
        {
            if (Stat(d) is not { } s || !Allows(user, s, UnixFileMode.UserExecute, UnixFileMode.GroupExecute, UnixFileMode.OtherExecute)) return false;
        }
        return Stat(full) is { IsDirectory: false } f && Allows(user, f, UnixFileMode.UserRead, UnixFileMode.GroupRead, UnixFileMode.OtherRead);
    }

    private static bool Allows(UserIds user, FileOwner f, UnixFileMode owner, UnixFileMode group, UnixFileMode other) =>
        f.Uid == user.Uid ? (f.Mode & owner) != 0 : f.Gid == user.Gid ? (f.Mode & group) != 0 : (f.Mode & other) != 0;

    /// <summary>chown(2) without following a final link; throws on failure.</summary>
    public static void Chown(string path, uint uid, uint gid)
    {
        if (lchown(path, uid, gid) != 0) throw new IOException($"chown {path}: errno {Marshal.GetLastPInvokeError()}");
    }

    [DllImport("libc", SetLastError = true)] private static extern int lchown([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint uid, uint gid);
    [DllImport("libc")] private static extern uint geteuid();
    [DllImport("libc")] private static extern int getpwnam_r([MarshalAs(UnmanagedType.LPUTF8Str)] string name, void* pwd, byte* buf, nuint buflen, nint* result);
    [DllImport("libc")] private static extern int getpwuid_r(uint uid, void* pwd, byte* buf, nuint buflen, nint* result);
    [DllImport("libc", SetLastError = true)] private static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, void* buf);
}
