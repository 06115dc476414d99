using System.Runtime.InteropServices;

namespace Virtd.Core.Storage;

/// <summary>statvfs(3): the size of the filesystem a directory is on, and what an unprivileged user may still write.</summary>
internal static class FileSystemSpace
{
    public static (long Capacity, long Free) Of(string path)
    {
        var buf = new ulong[16]; // struct statvfs on 64-bit glibc: 11 unsigned longs and 6 ints of spare
        if (statvfs(path, buf) != 0) return (0, 0);
        var fragment = buf[1];
        return ((long)(buf[2] * fragment), (long)(buf[4] * fragment));
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int statvfs([MarshalAs(UnmanagedType.LPUTF8Str)] string path, [Out] ulong[] buf);
}
