using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Virtd.Drivers.Qemu.Native;

/// <summary>
/// Sees every watched process exit the moment it does: one thread for all VMs, blocked in
/// <c>epoll_wait</c> on their pidfds (a pidfd turns readable when its process exits, zombie or not,
/// child or adopted). Children are reaped here, so their exit status is known. No polling, no thread per VM.
/// Owned by the QEMU driver, stopped in its cleanup.
/// </summary>
internal sealed class ExitWatcher : IDisposable
{
    private readonly ConcurrentDictionary<ulong, Watch> _watches = new();
    private readonly ILogger _log;
    private readonly int _epoll;
    private readonly int _wake;
    private readonly Thread _thread;
    private long _next = 1;
    private volatile bool _stopping;

    private sealed record Watch(PidfdHandle Pidfd, TaskCompletionSource<WaitStatus> Exit);

    public ExitWatcher(ILogger log)
    {
        _log = log;
        _epoll = Linux.EpollCreate();
        _wake = Linux.EventFd();
        Linux.EpollAdd(_epoll, _wake, 0);
        _thread = new Thread(Run) { IsBackground = true, Name = "virtd-exit-watcher" };
        _thread.Start();
    }

    /// <summary>Completes (on the thread pool) when the process behind <paramref name="pidfd"/> exits.</summary>
    public Task<WaitStatus> WatchAsync(PidfdHandle pidfd)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        var key = (ulong)Interlocked.Increment(ref _next);
        var watch = new Watch(pidfd, new TaskCompletionSource<WaitStatus>(TaskCreationOptions.RunContinuationsAsynchronously));
        _watches[key] = watch;
        var added = false;
        pidfd.DangerousAddRef(ref added);
        try { Linux.EpollAdd(_epoll, pidfd.Fd, key); }
        catch
        {
            _watches.TryRemove(key, out _);
            pidfd.DangerousRelease();
            throw;
        }
        return watch.Exit.Task;
    }

    private void Run()
    {
        Span<Linux.EpollEvent> events = stackalloc Linux.EpollEvent[64];
        while (!_stopping)
        {
            int n;
            try { n = Linux.EpollWait(_epoll, events, -1); }
            catch (IOException e)
            {
                _log.LogError(e, "exit watcher stopped");
                return;
            }
            for (var i = 0; i < n; i++)
            {
                var key = events[i].Data;
                if (key == 0)
                {
                    Linux.EventFdDrain(_wake);
                    continue;
                }
                if (!_watches.TryRemove(key, out var watch)) continue;
                Linux.EpollRemove(_epoll, watch.Pidfd.Fd);
                WaitStatus status;
                try { status = Linux.Reap(watch.Pidfd); }
                catch (Exception e)
                {
                    _log.LogError(e, "reaping a process failed");
                    status = new WaitStatus(null, null);
                }
                watch.Pidfd.DangerousRelease();
                watch.Exit.TrySetResult(status);
            }
        }
    }

    /// <summary>Stops the thread; processes still watched stay as they are (the next daemon takes them back).</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        Linux.EventFdSignal(_wake);
        if (!_thread.Join(TimeSpan.FromSeconds(2))) _log.LogWarning("exit watcher thread did not stop within 2 s");
        foreach (var (key, watch) in _watches)
        {
            if (!_watches.TryRemove(key, out _)) continue;
            watch.Pidfd.DangerousRelease();
            watch.Exit.TrySetCanceled();
        }
        _ = Linux.close(_wake);
        _ = Linux.close(_epoll);
    }
}
