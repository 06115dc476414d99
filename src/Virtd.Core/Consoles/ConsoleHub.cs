using System.Threading.Channels;

namespace Virtd.Core.Consoles;

/// <summary>A running VM's serial console, shared by every viewer: output fans out to all, input from any goes to the guest.</summary>
public interface IVmConsole
{
    /// <summary>A new viewer: first the recent output (at most <see cref="ConsoleHub.HistoryBytes"/>), then what follows.</summary>
    ConsoleViewer Attach();

    /// <summary>Sends input to the guest; waits (bounded by <paramref name="cancellationToken"/>) while the guest does not take it.</summary>
    ValueTask WriteAsync(ReadOnlyMemory<byte> input, CancellationToken cancellationToken);
}

/// <summary>
/// The fan-out of one console. The driver's reader loop <see cref="Publish"/>es what the guest wrote: it goes into a ring
/// of the last 64 KiB (what a new viewer gets first) and into each viewer's own queue. A queue is bounded in bytes; a
/// viewer that falls further behind is dropped (<see cref="ConsoleViewer.Dropped"/>), so a viewer that never reads slows
/// neither the guest nor the others, and a guest flooding its console holds at most the ring plus one queue per viewer.
/// Publish never waits: it only copies under a lock held for the copy.
/// </summary>
public sealed class ConsoleHub : IVmConsole
{
    public const int HistoryBytes = 64 * 1024;

    /// <summary>How far a viewer may fall behind before it is dropped.</summary>
    public const int ViewerQueueBytes = 1024 * 1024;

    private readonly Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> _input;
    private readonly int _viewerQueueBytes;
    private readonly Lock _lock = new();
    // Grows (1 KiB, doubling) to HistoryBytes: most consoles say little, and a simulated domain's says one line.
    private byte[] _ring = new byte[1024];
    private long _total;
    private readonly List<ConsoleViewer> _viewers = [];
    private string? _ended;

    /// <param name="input">Delivers a viewer's input to the guest.</param>
    public ConsoleHub(Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> input, int viewerQueueBytes = ViewerQueueBytes)
    {
        _input = input;
        _viewerQueueBytes = viewerQueueBytes;
    }

    /// <summary>Bytes published since the hub was made.</summary>
    public long Total
    {
        get { lock (_lock) return _total; }
    }

    public int Viewers
    {
        get { lock (_lock) return _viewers.Count; }
    }

    /// <summary>Output the guest wrote: into the history and every viewer's queue; a viewer whose queue would overflow is dropped.</summary>
    public void Publish(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        var chunk = data.ToArray();
        List<ConsoleViewer>? dropped = null;
        lock (_lock)
        {
            if (_ended is not null) return;
            AppendToRing(data);
            for (var i = _viewers.Count - 1; i >= 0; i--)
            {
                if (_viewers[i].Offer(chunk)) continue;
                (dropped ??= []).Add(_viewers[i]);
                _viewers.RemoveAt(i);
            }
        }
        if (dropped is null) return;
        foreach (var v in dropped) v.Drop($"the viewer fell more than {_viewerQueueBytes / 1024} KiB behind the console's output");
    }

    private void AppendToRing(ReadOnlySpan<byte> data)
    {
        if (data.Length >= HistoryBytes) data = data[^HistoryBytes..];
        if (_ring.Length < HistoryBytes && _total + data.Length > _ring.Length)
        {
            // Still linear (nothing has wrapped below the full size): the bytes so far are _ring[0.._total).
            var size = _ring.Length;
            while (size < _total + data.Length && size < HistoryBytes) size *= 2;
            var bigger = new byte[Math.Min(size, HistoryBytes)];
            _ring.AsSpan(0, (int)_total).CopyTo(bigger);
            _ring = bigger;
        }
        var capacity = _ring.Length;
        var at = (int)(_total % capacity);
        var first = Math.Min(data.Length, capacity - at);
        data[..first].CopyTo(_ring.AsSpan(at));
        data[first..].CopyTo(_ring);
        _total += data.Length;
    }

    private byte[] History()
    {
        var capacity = _ring.Length;
        var length = (int)Math.Min(_total, capacity);
        var history = new byte[length];
        if (length == 0) return history;
        var start = (int)((_total - length) % capacity);
        var first = Math.Min(length, capacity - start);
        _ring.AsSpan(start, first).CopyTo(history);
        _ring.AsSpan(0, length - first).CopyTo(history.AsSpan(first));
        return history;
    }

    public ConsoleViewer Attach()
    {
        var viewer = new ConsoleViewer(this, _viewerQueueBytes);
        lock (_lock)
        {
            var history = History();
            if (history.Length > 0) viewer.Offer(history);
            if (_ended is { } reason) viewer.End(reason);
            else _viewers.Add(viewer);
        }
        return viewer;
    }

    public ValueTask WriteAsync(ReadOnlyMemory<byte> input, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (_ended is not null) return ValueTask.CompletedTask;
        }
        return _input(input, cancellationToken);
    }

    internal void Detach(ConsoleViewer viewer)
    {
        lock (_lock) _viewers.Remove(viewer);
    }

    /// <summary>The console is gone (the VM exited): every viewer's stream ends after what it has queued.</summary>
    public void End(string reason)
    {
        ConsoleViewer[] viewers;
        lock (_lock)
        {
            if (_ended is not null) return;
            _ended = reason;
            viewers = [.. _viewers];
            _viewers.Clear();
        }
        foreach (var v in viewers) v.End(reason);
    }
}

/// <summary>One viewer of a console: its own bounded queue of output. Dispose to leave.</summary>
public sealed class ConsoleViewer : IDisposable
{
    private readonly ConsoleHub _hub;
    private readonly long _limit;
    private readonly Channel<byte[]> _queue = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _dropped = new();
    private long _queued;

    internal ConsoleViewer(ConsoleHub hub, long limit)
    {
        _hub = hub;
        _limit = limit;
    }

    /// <summary>Why the stream ended (the VM stopped, or this viewer was dropped), once it has.</summary>
    public string? EndReason { get; private set; }

    /// <summary>Cancelled when this viewer was dropped for falling too far behind: stop sending to it at once.</summary>
    public CancellationToken Dropped => _dropped.Token;

    /// <summary>Bytes waiting in this viewer's queue.</summary>
    public long Queued => Interlocked.Read(ref _queued);

    /// <summary>Called under the hub's lock.</summary>
    internal bool Offer(byte[] chunk)
    {
        if (Interlocked.Read(ref _queued) + chunk.Length > _limit && Interlocked.Read(ref _queued) > 0) return false;
        Interlocked.Add(ref _queued, chunk.Length);
        return _queue.Writer.TryWrite(chunk);
    }

    internal void Drop(string reason)
    {
        EndReason = reason;
        _queue.Writer.TryComplete();
        _dropped.Cancel();
    }

    internal void End(string reason)
    {
        EndReason ??= reason;
        _queue.Writer.TryComplete();
    }

    /// <summary>The next output, or null when the stream has ended (<see cref="EndReason"/> says why).</summary>
    public async ValueTask<byte[]?> ReadAsync(CancellationToken cancellationToken)
    {
        while (await _queue.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (!_queue.Reader.TryRead(out var chunk)) continue;
            Interlocked.Add(ref _queued, -chunk.Length);
            return chunk;
        }
        return null;
    }

    /// <summary>Output queued now, without waiting, joined (at most <paramref name="max"/> bytes past the first chunk).</summary>
    public bool TryReadMore(List<byte[]> into, int max)
    {
        var taken = 0;
        while (taken < max && _queue.Reader.TryRead(out var chunk))
        {
            Interlocked.Add(ref _queued, -chunk.Length);
            into.Add(chunk);
            taken += chunk.Length;
        }
        return taken > 0;
    }

    public void Dispose()
    {
        _hub.Detach(this);
        _queue.Writer.TryComplete();
    }
}
