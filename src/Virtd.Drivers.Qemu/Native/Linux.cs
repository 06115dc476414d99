using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virtd.Drivers.Qemu.Native;

/// <summary>A pidfd: a handle on one process that cannot be confused with a later process reusing its pid.</summary>
internal sealed class PidfdHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    internal PidfdHandle(int fd) : this() => SetHandle(fd);

    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Linux.close((int)handle) == 0;
}

/// <summary>How a process ended, as <c>waitid</c> reports it; both null when the status could not be read (not our child).</summary>
internal readonly record struct WaitStatus(int? ExitCode, int? Signal);

/// <summary>The few Linux calls .NET does not wrap (x86-64 and arm64 glibc ≥ 2.36 layouts).</summary>
internal static unsafe class Linux
{
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int SIGCONT = 18;
    public const int SIGSTOP = 19;

    private const int ENOENT = 2;
    private const int ESRCH = 3;
    private const int EINTR = 4;
    private const int ECHILD = 10;

    private const int O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0x40, O_APPEND = 0x400;
    private const short POSIX_SPAWN_SETSIGDEF = 0x04, POSIX_SPAWN_SETSIGMASK = 0x08, POSIX_SPAWN_SETSID = 0x80;
    private const int P_PIDFD = 3, WEXITED = 4, WNOHANG = 1;
    private const int CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3;

    /// <summary>
    /// Starts <paramref name="argv"/>[0] as a child in a session of its own (so Ctrl-C and the daemon's
    /// exit never reach it), stdin from /dev/null, stdout and stderr appended to <paramref name="logPath"/>,
    /// working directory <c>/</c>, default signal dispositions. No shell, no fork of the .NET process.
    /// </summary>
    /// <param name="passFds">Open descriptors the child gets at fixed numbers (Source → Target): the daemon opens
    /// every file and socket QEMU uses, so QEMU needs no access to any path. Targets must all be above every source.</param>
    public static int Spawn(IReadOnlyList<string> argv, IReadOnlyList<string> environment, string logPath, IReadOnlyList<(int Source, int Target)>? passFds = null)
    {
        // glibc: posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336, sigset_t 128; leave room.
        var actions = NativeMemory.AllocZeroed(256);
        var attr = NativeMemory.AllocZeroed(512);
        var sigset = NativeMemory.AllocZeroed(256);
        var strings = new List<nint>();
        try
        {
            Check(posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init");
            Check(posix_spawnattr_init(attr), "posix_spawnattr_init");
            try
            {
                Check(posix_spawn_file_actions_addopen(actions, 0, "/dev/null", O_RDONLY, 0), "addopen stdin");
                Check(posix_spawn_file_actions_addopen(actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0b110_000_000), "addopen log");
                Check(posix_spawn_file_actions_adddup2(actions, 1, 2), "adddup2 stderr");
                // dup2 clears close-on-exec on the new number; the source (opened by .NET with O_CLOEXEC) closes at exec.
                foreach (var (source, target) in passFds ?? []) Check(posix_spawn_file_actions_adddup2(actions, source, target), "adddup2 passed fd");
                Check(posix_spawn_file_actions_addchdir_np(actions, "/"), "addchdir");

                Check(sigemptyset(sigset), "sigemptyset");
                Check(posix_spawnattr_setsigmask(attr, sigset), "setsigmask");
                // The runtime ignores SIGPIPE and handles others; the child starts with the defaults.
                foreach (var sig in (ReadOnlySpan<int>)[1, 2, 3, 10, 12, 13, 14, 15, 17, 21, 22, 28])
                    Check(sigaddset(sigset, sig), "sigaddset");
                Check(posix_spawnattr_setsigdefault(attr, sigset), "setsigdefault");
                Check(posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF), "setflags");

                var argvp = stackalloc nint[argv.Count + 1];
                for (var i = 0; i < argv.Count; i++) argvp[i] = Utf8(argv[i], strings);
                argvp[argv.Count] = 0;
                var envp = stackalloc nint[environment.Count + 1];
                for (var i = 0; i < environment.Count; i++) envp[i] = Utf8(environment[i], strings);
                envp[environment.Count] = 0;

                int pid;
                var rc = posix_spawn(&pid, argv[0], actions, attr, argvp, envp);
                if (rc != 0) throw new IOException($"cannot start {argv[0]}: {Marshal.GetPInvokeErrorMessage(rc)}", rc);
                return pid;
            }
            finally
            {
                _ = posix_spawn_file_actions_destroy(actions);
                _ = posix_spawnattr_destroy(attr);
            }
        }
        finally
        {
            foreach (var s in strings) Marshal.FreeCoTaskMem(s);
            NativeMemory.Free(actions);
            NativeMemory.Free(attr);
            NativeMemory.Free(sigset);
        }

        static void Check(int rc, string what)
        {
            if (rc != 0) throw new IOException($"{what} failed: {Marshal.GetPInvokeErrorMessage(rc)}", rc);
        }
    }

    private static nint Utf8(string s, List<nint> owned)
    {
        var p = Marshal.StringToCoTaskMemUTF8(s);
        owned.Add(p);
        return p;
    }

    /// <summary>A pidfd for <paramref name="pid"/>, or null when no such process exists.</summary>
    public static PidfdHandle? OpenPidfd(int pid)
    {
        var fd = pidfd_open(pid, 0);
        if (fd >= 0) return new PidfdHandle(fd);
        var errno = Marshal.GetLastPInvokeError();
        if (errno == ESRCH) return null;
        throw new IOException($"pidfd_open({pid}) failed: {Marshal.GetPInvokeErrorMessage(errno)}");
    }

    /// <summary>Sends a signal through the pidfd; false when the process is already gone.</summary>
    public static bool SendSignal(PidfdHandle pidfd, int signal)
    {
        if (pidfd.IsClosed) return false;
        if (pidfd_send_signal(pidfd, signal, 0, 0) == 0) return true;
        var errno = Marshal.GetLastPInvokeError();
        if (errno == ESRCH) return false;
        throw new IOException($"pidfd_send_signal({signal}) failed: {Marshal.GetPInvokeErrorMessage(errno)}");
    }

    /// <summary>Reaps an exited child through its pidfd. Status unknown (nulls) when it is not our child.</summary>
    public static WaitStatus Reap(PidfdHandle pidfd)
    {
        var info = stackalloc byte[128];
        while (true)
        {
            new Span<byte>(info, 128).Clear();
            if (waitid(P_PIDFD, (uint)pidfd.Fd, info, WEXITED | WNOHANG) == 0) break;
            var errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) continue;
            return new WaitStatus(null, null); // ECHILD: adopted from an earlier daemon; init reaps it
        }
        // siginfo_t: si_signo, si_errno, si_code, (pad), si_pid, si_uid, si_status
        var code = *(int*)(info + 8);
        var pid = *(int*)(info + 16);
        var status = *(int*)(info + 24);
        if (pid == 0) return new WaitStatus(null, null); // not exited yet (cannot happen once the pidfd is readable)
        return code switch
        {
            CLD_EXITED => new WaitStatus(status, null),
            CLD_KILLED or CLD_DUMPED => new WaitStatus(null, status),
            _ => new WaitStatus(null, null),
        };
    }

    public static bool IsNoSuchFile(int errno) => errno == ENOENT;

    public const int O_RDWR = 2;
    private const int O_CLOEXEC = 0x80000, O_NOCTTY = 0x100;

    /// <summary>open(2) with O_CLOEXEC (the descriptor reaches a child only through <see cref="Spawn"/>'s dup2).</summary>
    public static Microsoft.Win32.SafeHandles.SafeFileHandle Open(string path, int flags, uint mode = 0)
    {
        var fd = open(path, flags | O_CLOEXEC | O_NOCTTY, mode);
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open {path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        return new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>Flags of a log opened for appending (created if missing).</summary>
    public const int AppendFlags = O_WRONLY | O_CREAT | O_APPEND;

    public const int ReadOnlyFlags = O_RDONLY;

    /// <summary>
    /// A listening Unix socket bound at <paramref name="path"/> (mode 0600), close-on-exec; QEMU gets it as its monitor.
    /// The daemon closes its own copy after the spawn; the file stays for the next daemon to connect to.
    /// </summary>
    public static Microsoft.Win32.SafeHandles.SafeFileHandle ListenUnix(string path)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(path);
        if (bytes.Length >= 108) throw new IOException($"socket path {path} is longer than 107 bytes");
        var fd = socket(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"socket failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        var handle = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        var addr = stackalloc byte[110];
        *(ushort*)addr = 1;
        bytes.CopyTo(new Span<byte>(addr + 2, 108));
        if (bind(fd, addr, 2 + bytes.Length + 1) != 0 || listen(fd, 1) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            throw new IOException($"cannot listen on {path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        return handle;
    }

    /// <summary>A connected pair of Unix stream sockets, both close-on-exec.</summary>
    public static (System.Net.Sockets.SafeSocketHandle, System.Net.Sockets.SafeSocketHandle) SocketPair()
    {
        var fds = stackalloc int[2];
        if (socketpair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | O_CLOEXEC, 0, fds) != 0)
            throw new IOException($"socketpair failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        return (new System.Net.Sockets.SafeSocketHandle(fds[0], ownsHandle: true), new System.Net.Sockets.SafeSocketHandle(fds[1], ownsHandle: true));
    }

    private const int EAGAIN = 11;

    /// <summary>
    /// Sends <paramref name="data"/> with <paramref name="passFd"/> attached (SCM_RIGHTS): how QEMU's monitor receives a
    /// descriptor for <c>getfd</c>. Returns the bytes sent, or -1 when the socket would block (try again).
    /// </summary>
    public static int SendWithFd(System.Runtime.InteropServices.SafeHandle socket, ReadOnlySpan<byte> data, int passFd)
    {
        var added = false;
        socket.DangerousAddRef(ref added);
        try
        {
            fixed (byte* p = data)
            {
                var iov = stackalloc nint[2];
                iov[0] = (nint)p;
                iov[1] = data.Length;
                var control = stackalloc byte[24]; // CMSG_SPACE(sizeof(int))
                new Span<byte>(control, 24).Clear();
                *(ulong*)control = 20; // CMSG_LEN(sizeof(int))
                *(int*)(control + 8) = 1; // SOL_SOCKET
                *(int*)(control + 12) = 1; // SCM_RIGHTS
                *(int*)(control + 16) = passFd;
                var msg = stackalloc byte[56]; // struct msghdr
                new Span<byte>(msg, 56).Clear();
                *(nint*)(msg + 16) = (nint)iov;
                *(nint*)(msg + 24) = 1;
                *(nint*)(msg + 32) = (nint)control;
                *(nint*)(msg + 40) = 24;
                while (true)
                {
                    var n = sendmsg((int)socket.DangerousGetHandle(), msg, 0x4000 /* MSG_NOSIGNAL */);
                    if (n >= 0) return (int)n;
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == EINTR) continue;
                    if (errno == EAGAIN) return -1;
                    throw new IOException($"sendmsg failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
                }
            }
        }
        finally
        {
            if (added) socket.DangerousRelease();
        }
    }

    // ---- epoll and eventfd, for the exit watcher ----

    public const uint EPOLLIN = 1;

    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct EpollEvent
    {
        public uint Events;
        public ulong Data;
    }

    public static int EpollCreate()
    {
        var fd = epoll_create1(0x80000 /* EPOLL_CLOEXEC */);
        if (fd < 0) throw new IOException($"epoll_create1 failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        return fd;
    }

    public static void EpollAdd(int epfd, int fd, ulong data)
    {
        var ev = new EpollEvent { Events = EPOLLIN, Data = data };
        if (epoll_ctl(epfd, 1 /* ADD */, fd, &ev) != 0)
            throw new IOException($"epoll_ctl(ADD) failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
    }

    public static void EpollRemove(int epfd, int fd) => _ = epoll_ctl(epfd, 2 /* DEL */, fd, null);

    /// <summary>Waits for events; 0 on EINTR.</summary>
    public static int EpollWait(int epfd, Span<EpollEvent> events, int timeoutMs)
    {
        fixed (EpollEvent* p = events)
        {
            var n = epoll_wait(epfd, p, events.Length, timeoutMs);
            if (n >= 0) return n;
            var errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) return 0;
            throw new IOException($"epoll_wait failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
    }

    public static int EventFd()
    {
        var fd = eventfd(0, 0x80000 /* EFD_CLOEXEC */ | 0x800 /* EFD_NONBLOCK */);
        if (fd < 0) throw new IOException($"eventfd failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        return fd;
    }

    public static void EventFdSignal(int fd)
    {
        ulong one = 1;
        _ = write(fd, &one, 8);
    }

    public static void EventFdDrain(int fd)
    {
        ulong value;
        _ = read(fd, &value, 8);
    }

    [DllImport("libc", SetLastError = true)] public static extern int close(int fd);
    [DllImport("libc", SetLastError = true)] private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mode);
    [DllImport("libc", SetLastError = true)] private static extern int socket(int domain, int type, int protocol);
    [DllImport("libc", SetLastError = true)] private static extern int socketpair(int domain, int type, int protocol, int* fds);
    [DllImport("libc", SetLastError = true)] private static extern nint sendmsg(int fd, void* msg, int flags);
    [DllImport("libc", SetLastError = true)] private static extern int bind(int fd, void* addr, int len);
    [DllImport("libc", SetLastError = true)] private static extern int listen(int fd, int backlog);
    [DllImport("libc", SetLastError = true)] private static extern nint read(int fd, void* buf, nint count);
    [DllImport("libc", SetLastError = true)] private static extern nint write(int fd, void* buf, nint count);
    [DllImport("libc", SetLastError = true)] private static extern int pidfd_open(int pid, uint flags);
    [DllImport("libc", SetLastError = true)] private static extern int pidfd_send_signal(PidfdHandle pidfd, int sig, nint info, uint flags);
    [DllImport("libc", SetLastError = true)] private static extern int waitid(int idtype, uint id, void* infop, int options);
    [DllImport("libc", SetLastError = true)] private static extern int epoll_create1(int flags);
    [DllImport("libc", SetLastError = true)] private static extern int epoll_ctl(int epfd, int op, int fd, EpollEvent* ev);
    [DllImport("libc", SetLastError = true)] private static extern int epoll_wait(int epfd, EpollEvent* events, int maxevents, int timeout);
    [DllImport("libc", SetLastError = true)] private static extern int eventfd(uint initval, int flags);

    [DllImport("libc")] private static extern int posix_spawn(int* pid, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, void* fileActions, void* attr, nint* argv, nint* envp);
    [DllImport("libc")] private static extern int posix_spawn_file_actions_init(void* fa);
    [DllImport("libc")] private static extern int posix_spawn_file_actions_destroy(void* fa);
    [DllImport("libc")] private static extern int posix_spawn_file_actions_addopen(void* fa, int fd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int oflag, uint mode);
    [DllImport("libc")] private static extern int posix_spawn_file_actions_adddup2(void* fa, int fd, int newfd);
    [DllImport("libc")] private static extern int posix_spawn_file_actions_addchdir_np(void* fa, [MarshalAs(UnmanagedType.LPUTF8Str)] string path);
    [DllImport("libc")] private static extern int posix_spawnattr_init(void* attr);
    [DllImport("libc")] private static extern int posix_spawnattr_destroy(void* attr);
    [DllImport("libc")] private static extern int posix_spawnattr_setflags(void* attr, short flags);
    [DllImport("libc")] private static extern int posix_spawnattr_setsigmask(void* attr, void* sigmask);
    [DllImport("libc")] private static extern int posix_spawnattr_setsigdefault(void* attr, void* sigdefault);
    [DllImport("libc", SetLastError = true)] private static extern int sigemptyset(void* set);
    [DllImport("libc", SetLastError = true)] private static extern int sigaddset(void* set, int signum);
}
