using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Virtd.Core.Events;

namespace Virtd.Api.Events;

/// <summary>
/// Writes one subscription to one HTTP response as Server-Sent Events. Every event is a frame
/// <c>id:</c> / <c>event:</c> / <c>data:</c> (one line of JSON); a frame with only <c>id:</c> moves
/// the client's resume point without an event. Queued events are written together and flushed once
/// (every <see cref="FlushBytes"/> at the most), so one flush carries many events when they come fast.
/// <para>
/// The stream ends when the client goes, when the daemon stops (the caller's token), and when the
/// subscriber overflows: then it gets a final <c>resync</c> if the client takes it within
/// <see cref="CutOffGrace"/>, else the connection is dropped. Nothing here ever holds a lock.
/// </para>
/// </summary>
internal sealed class EventStream(HttpContext http, EventBus bus, EventBus.Subscription sub, TimeSpan heartbeat, TimeProvider time, ILogger log)
{
    /// <summary>Flush at least this often while writing a backlog, so the client sees events as they are written.</summary>
    internal const int FlushBytes = 32 * 1024;

    /// <summary>How long an overflowed client has to take its final resync before its connection is dropped.</summary>
    internal static readonly TimeSpan CutOffGrace = TimeSpan.FromSeconds(5);

    private readonly PipeWriter _out = http.Response.BodyWriter;
    private int _unflushed;
    private long _lastId = long.MinValue;

    public async Task RunAsync(CancellationToken stop)
    {
        try
        {
            WriteOpening();
            if (!await FlushAsync(stop).ConfigureAwait(false)) return;
            await PumpAsync(stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // The client went away or the daemon stops: the stream simply ends.
        }
        catch (IOException)
        {
            // The connection broke while writing.
        }
    }

    /// <summary>A resync (stale Last-Event-ID), or the missed events; then the point live events follow.</summary>
    private void WriteOpening()
    {
        if (sub.ResyncFirst)
        {
            WriteEvent(Resync(ResyncEventData.ReplayUnavailable, sub.Start,
                "Last-Event-ID is older than the replay buffer or from another run of the daemon: re-list, then go on from this id"));
            return;
        }
        foreach (var e in sub.Replay) WriteEvent(e);
        // A client that gets no event before it reconnects still resumes from here, not from "now".
        if (sub.Start > _lastId) WriteId(sub.Start);
    }

    private async Task PumpAsync(CancellationToken stop)
    {
        var reader = sub.Reader;
        var idle = CancellationTokenSource.CreateLinkedTokenSource(stop);
        try
        {
            while (true)
            {
                var wrote = false;
                while (!sub.Overflowed && reader.TryRead(out var e))
                {
                    WriteEvent(e);
                    wrote = true;
                    if (_unflushed < FlushBytes) continue;
                    if (!await FlushAsync(stop).ConfigureAwait(false)) return;
                    wrote = false;
                }
                if (sub.Overflowed)
                {
                    await CutOffAsync(stop).ConfigureAwait(false);
                    return;
                }
                if (wrote && !await FlushAsync(stop).ConfigureAwait(false)) return;

                // Idle: wait for the next event, at most one heartbeat interval.
                idle.CancelAfter(heartbeat);
                try
                {
                    // False only once the queue is closed: the subscriber overflowed (handled above next time round).
                    if (!await reader.WaitToReadAsync(idle.Token).ConfigureAwait(false) && !sub.Overflowed) return;
                }
                catch (OperationCanceledException) when (!stop.IsCancellationRequested)
                {
                    WriteHeartbeat();
                    if (!await FlushAsync(stop).ConfigureAwait(false)) return;
                }
                if (!idle.TryReset())
                {
                    idle.Dispose();
                    idle = CancellationTokenSource.CreateLinkedTokenSource(stop);
                }
            }
        }
        finally
        {
            idle.Dispose();
        }
    }

    /// <summary>
    /// A comment line, and the bus's last id if nothing is left to write: every matching event up to it
    /// has been written, so a reconnect from there misses nothing, and a quiet filter does not fall out of
    /// the replay buffer while other domains are busy.
    /// </summary>
    private void WriteHeartbeat()
    {
        var last = bus.LastId; // read before looking at the queue (see EventBus.LastId)
        Write(": heartbeat\n\n"u8);
        if (last > _lastId && !sub.Overflowed && !sub.Reader.TryPeek(out _)) WriteId(last);
    }

    /// <summary>The subscriber fell behind: what is queued is dropped (the client re-lists), a resync says so, the stream ends.</summary>
    private async Task CutOffAsync(CancellationToken stop)
    {
        while (sub.Reader.TryRead(out _)) { }
        var last = bus.LastId;
        log.LogInformation("events: subscriber {Remote} read too slowly and was cut off at id {Id} (Events:SubscriberQueue)",
            http.Connection.RemoteIpAddress, last);
        WriteEvent(Resync(ResyncEventData.Overflow, last,
            "this client read events too slowly and was cut off: re-list, then reconnect from this id"));
        using var grace = CancellationTokenSource.CreateLinkedTokenSource(stop);
        grace.CancelAfter(CutOffGrace);
        try
        {
            await _out.FlushAsync(grace.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            // It reads nothing at all: drop the connection rather than keep its buffers.
            http.Abort();
        }
    }

    /// <summary>Flushes; false when the client has gone. A flush blocked on a client that stopped reading gives way to a cut-off.</summary>
    private async ValueTask<bool> FlushAsync(CancellationToken stop)
    {
        _unflushed = 0;
        var pending = _out.FlushAsync(stop);
        FlushResult result;
        if (pending.IsCompleted)
        {
            result = pending.Result;
        }
        else
        {
            var flush = pending.AsTask();
            if (await Task.WhenAny(flush, sub.CutOff).ConfigureAwait(false) != flush) _out.CancelPendingFlush();
            result = await flush.ConfigureAwait(false);
        }
        return !result.IsCompleted;
    }

    private VirtdEvent Resync(string reason, long id, string detail) =>
        new(id, EventTypes.Resync, time.GetUtcNow(), null, null, new ResyncEventData(reason, detail));

    private void WriteEvent(VirtdEvent e)
    {
        var json = e.Json.Span;
        var span = _out.GetSpan(40 + Encoding.UTF8.GetMaxByteCount(e.Type.Length) + json.Length);
        var n = Put(span, "id: "u8);
        e.Id.TryFormat(span[n..], out var digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        n += digits;
        n += Put(span[n..], "\nevent: "u8);
        n += Encoding.UTF8.GetBytes(e.Type, span[n..]);
        n += Put(span[n..], "\ndata: "u8);
        json.CopyTo(span[n..]);
        n += json.Length;
        n += Put(span[n..], "\n\n"u8);
        _out.Advance(n);
        _unflushed += n;
        _lastId = e.Id;
    }

    private void WriteId(long id)
    {
        var span = _out.GetSpan(32);
        var n = Put(span, "id: "u8);
        id.TryFormat(span[n..], out var digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        n += digits;
        n += Put(span[n..], "\n\n"u8);
        _out.Advance(n);
        _unflushed += n;
        _lastId = id;
    }

    private void Write(ReadOnlySpan<byte> bytes)
    {
        _out.Write(bytes);
        _unflushed += bytes.Length;
    }

    private static int Put(Span<byte> to, ReadOnlySpan<byte> bytes)
    {
        bytes.CopyTo(to);
        return bytes.Length;
    }
}
