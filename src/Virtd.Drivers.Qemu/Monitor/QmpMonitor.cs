using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Polly;
using Polly.Retry;
using Virtd.Core.Errors;
using Virtd.Core.Observability;

namespace Virtd.Drivers.Qemu.Monitor;

/// <summary>
/// One QMP connection to one QEMU (libvirt's qemuMonitor). One async reader loop, no thread of its own:
/// replies are matched to commands by <c>id</c>, events go into this VM's own serial queue
/// (<see cref="Events"/>), every command has a timeout after which its late reply is discarded, and
/// end of file ends the connection (<see cref="Completion"/>). Writes go through one writer loop so
/// commands from several jobs never interleave on the socket.
/// </summary>
public sealed class QmpMonitor : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly PipeReader _reader;
    private readonly string _owner;
    private readonly TimeProvider _time;
    private readonly ILogger _log;
    private readonly VirtdMetrics _metrics;
    private readonly ConcurrentDictionary<long, Pending> _pending = new();
    private readonly Channel<(long Id, byte[] Bytes, System.Runtime.InteropServices.SafeHandle? Fd)> _outgoing =
        Channel.CreateUnbounded<(long, byte[], System.Runtime.InteropServices.SafeHandle?)>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Channel<QmpEvent> _events = Channel.CreateUnbounded<QmpEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly TaskCompletionSource<QmpGreeting> _greeting = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _readLoop;
    private readonly Task _writeLoop;
    private long _nextId;
    private volatile string? _closeReason;
    private int _disposed;

    private sealed record Pending(string Command, TaskCompletionSource<QmpMessage> Reply);

    private QmpMonitor(Socket socket, string owner, TimeProvider time, ILogger log, VirtdMetrics? metrics)
    {
        _metrics = metrics ?? VirtdMetrics.None;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 16 * 1024, leaveOpen: true));
        _owner = owner;
        _time = time;
        _log = log;
        _readLoop = ReadLoopAsync();
        _writeLoop = WriteLoopAsync();
    }

    /// <summary>Events in the order QEMU sent them; completes when the connection ends.</summary>
    public ChannelReader<QmpEvent> Events => _events.Reader;

    /// <summary>Completes when the connection has ended (EOF, error or dispose); never faults.</summary>
    public Task Completion => _readLoop;

    /// <summary>Why the connection ended, once it has.</summary>
    public string? CloseReason => _closeReason;

    /// <summary>QEMU's version from the greeting.</summary>
    public string Version { get; private set; } = "unknown";

    /// <summary>
    /// Connects to the monitor socket at <paramref name="path"/>, retrying while it does not exist yet or
    /// refuses (QEMU creates it while starting), until <paramref name="cancellationToken"/> says stop; then
    /// reads the greeting and enters command mode (<c>qmp_capabilities</c>).
    /// </summary>
    public static async Task<QmpMonitor> ConnectAsync(string path, string owner, TimeSpan commandTimeout, TimeProvider time, ILogger log,
        CancellationToken cancellationToken, VirtdMetrics? metrics = null)
    {
        var socket = await ConnectSocketAsync(path, time, cancellationToken).ConfigureAwait(false);
        var monitor = new QmpMonitor(socket, owner, time, log, metrics);
        try
        {
            var greeting = await monitor._greeting.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            monitor.Version = greeting.Version;
            await monitor.ExecuteAsync("qmp_capabilities", null, commandTimeout, cancellationToken).ConfigureAwait(false);
            return monitor;
        }
        catch
        {
            await monitor.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Retries quickly at first (QEMU's socket appears ~20 ms after spawn), then every 20 ms.</summary>
    private static readonly RetryStrategyOptions ConnectRetry = new()
    {
        ShouldHandle = new PredicateBuilder().Handle<SocketException>(),
        MaxRetryAttempts = int.MaxValue,
        DelayGenerator = args => ValueTask.FromResult<TimeSpan?>(TimeSpan.FromMilliseconds(args.AttemptNumber < 50 ? 2 : 20)),
    };

    private static async Task<Socket> ConnectSocketAsync(string path, TimeProvider time, CancellationToken cancellationToken)
    {
        var pipeline = new ResiliencePipelineBuilder { TimeProvider = time }.AddRetry(ConnectRetry).Build();
        return await pipeline.ExecuteAsync(static async (p, ct) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(p), ct).ConfigureAwait(false);
                return socket;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }, path, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Runs one command and returns its <c>return</c> value. Fails <c>monitor-timeout</c> when no reply
    /// comes within <paramref name="timeout"/> (the late reply is then discarded), <c>hypervisor-error</c>
    /// with QEMU's own text when QEMU refuses, or when the connection ends first.
    /// </summary>
    public Task<JsonElement> ExecuteAsync(string command, JsonObject? arguments, TimeSpan timeout, CancellationToken cancellationToken) =>
        ExecuteAsync(command, arguments, timeout, null, cancellationToken);

    /// <summary>
    /// As <see cref="ExecuteAsync(string, JsonObject?, TimeSpan, CancellationToken)"/>, sending <paramref name="passFd"/> with
    /// the command (SCM_RIGHTS), as <c>getfd</c> needs. The caller keeps the handle open until the reply.
    /// </summary>
    public async Task<JsonElement> ExecuteAsync(string command, JsonObject? arguments, TimeSpan timeout,
        System.Runtime.InteropServices.SafeHandle? passFd, CancellationToken cancellationToken)
    {
        // A span per command, the child of the job's (or of the request's); counted and timed by command and outcome.
        using var activity = VirtdTracing.Source.StartActivity("qmp " + command, ActivityKind.Client);
        activity?.SetTag("virtd.qmp.command", command);
        activity?.SetTag("virtd.domain.name", _owner);
        var started = Stopwatch.GetTimestamp();
        var outcome = "closed";
        try
        {
            var message = await SendAsync(command, arguments, timeout, passFd, cancellationToken).ConfigureAwait(false);
            outcome = message is QmpReturn ? "ok" : "error";
            return message switch
            {
                QmpReturn r => r.Value,
                QmpError e => throw VirtdException.HypervisorError($"QEMU refused '{command}' for domain '{_owner}': {e.Description} ({e.Class})"),
                _ => throw VirtdException.HypervisorError($"unexpected reply to '{command}' from the monitor of domain '{_owner}'"),
            };
        }
        catch (VirtdException e)
        {
            if (e.Code == ErrorCodes.MonitorTimeout) outcome = "timeout";
            activity?.SetStatus(ActivityStatusCode.Error, outcome);
            throw;
        }
        catch (OperationCanceledException)
        {
            outcome = "cancelled";
            throw;
        }
        finally
        {
            _metrics.QmpCommand(command, outcome, started);
            activity?.SetTag("virtd.qmp.outcome", outcome);
        }
    }

    private async Task<QmpMessage> SendAsync(string command, JsonObject? arguments, TimeSpan timeout,
        System.Runtime.InteropServices.SafeHandle? passFd, CancellationToken cancellationToken)
    {
        if (_closeReason is { } closed) throw Closed(command, closed);
        var id = Interlocked.Increment(ref _nextId);
        var reply = new TaskCompletionSource<QmpMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = new Pending(command, reply);
        // The reader may have ended between the check above and the registration: it fails what it finds, so look again.
        if (_closeReason is { } closedNow && _pending.TryRemove(id, out _)) throw Closed(command, closedNow);
        if (!_outgoing.Writer.TryWrite((id, QmpProtocol.EncodeCommand(command, id, arguments), passFd)))
        {
            _pending.TryRemove(id, out _);
            throw Closed(command, _closeReason ?? "monitor closed");
        }
        QmpMessage message;
        try
        {
            message = await reply.Task.WaitAsync(timeout, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            _pending.TryRemove(id, out _);
            if (reply.Task.IsCompletedSuccessfully) message = reply.Task.Result; // it came at the last moment
            else throw VirtdException.MonitorTimeout(_owner, timeout);
        }
        catch (OperationCanceledException)
        {
            _pending.TryRemove(id, out _);
            throw;
        }
        return message;
    }

    private VirtdException Closed(string command, string reason) =>
        VirtdException.HypervisorError($"monitor of domain '{_owner}' closed during '{command}': {reason}");

    private async Task ReadLoopAsync()
    {
        await Task.Yield(); // the constructor returns before the first read
        var reason = "end of file (QEMU exited)";
        try
        {
            while (true)
            {
                var result = await _reader.ReadAsync().ConfigureAwait(false);
                var buffer = result.Buffer;
                while (QmpProtocol.TryReadLine(ref buffer, out var line))
                {
                    if (!QmpProtocol.IsBlank(line)) Dispatch(QmpProtocol.Parse(line));
                }
                if (buffer.Length > QmpProtocol.MaxLineBytes)
                {
                    reason = $"a message longer than {QmpProtocol.MaxLineBytes} bytes";
                    _log.LogWarning("monitor of domain {Domain}: {Reason}; closing", _owner, reason);
                    break;
                }
                _reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted || result.IsCanceled) break;
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
        {
            reason = Volatile.Read(ref _disposed) == 1 ? "closed by virtd" : $"connection lost: {e.Message}";
        }
        if (Volatile.Read(ref _disposed) == 1) reason = "closed by virtd";
        _closeReason = reason;
        _outgoing.Writer.TryComplete();
        _events.Writer.TryComplete();
        _greeting.TrySetException(VirtdException.HypervisorError($"monitor of domain '{_owner}' closed before its greeting: {reason}"));
        foreach (var id in _pending.Keys)
        {
            if (_pending.TryRemove(id, out var p)) p.Reply.TrySetException(Closed(p.Command, reason));
        }
        await _reader.CompleteAsync().ConfigureAwait(false);
    }

    private void Dispatch(QmpMessage message)
    {
        switch (message)
        {
            case QmpEvent e:
                _events.Writer.TryWrite(e);
                break;
            case QmpReturn { Id: { } rid }:
                Complete(rid, message);
                break;
            case QmpError { Id: { } eid }:
                Complete(eid, message);
                break;
            case QmpGreeting g:
                _greeting.TrySetResult(g);
                break;
            case QmpGarbage g:
                _log.LogWarning("monitor of domain {Domain}: ignored {Why}: {Text}", _owner, g.Why, g.Text);
                break;
            default:
                _log.LogWarning("monitor of domain {Domain}: ignored a reply without an id", _owner);
                break;
        }
    }

    private void Complete(long id, QmpMessage reply)
    {
        if (_pending.TryRemove(id, out var p)) p.Reply.TrySetResult(reply);
        else _log.LogDebug("monitor of domain {Domain}: discarded a late reply (id {Id})", _owner, id);
    }

    private async Task WriteLoopAsync()
    {
        await Task.Yield();
        await foreach (var (id, bytes, fd) in _outgoing.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                if (fd is null) await _stream.WriteAsync(bytes).ConfigureAwait(false);
                else await SendWithFdAsync(bytes, fd).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                if (_pending.TryRemove(id, out var p)) p.Reply.TrySetException(Closed(p.Command, $"write failed: {e.Message}"));
            }
        }
    }

    /// <summary>The descriptor goes with the first byte; the rest of the command follows as usual.</summary>
    private async Task SendWithFdAsync(byte[] bytes, System.Runtime.InteropServices.SafeHandle fd)
    {
        var added = false;
        fd.DangerousAddRef(ref added);
        try
        {
            for (var attempt = 0; ; attempt++)
            {
                var sent = Native.Linux.SendWithFd(_socket.SafeHandle, bytes.AsSpan(0, 1), (int)fd.DangerousGetHandle());
                if (sent > 0) break;
                if (attempt > 100) throw new IOException("the monitor socket stayed full");
                await Task.Delay(TimeSpan.FromMilliseconds(10), _time).ConfigureAwait(false);
            }
        }
        finally
        {
            if (added) fd.DangerousRelease();
        }
        await _stream.WriteAsync(bytes.AsMemory(1)).ConfigureAwait(false);
    }

    /// <summary>Closes the connection (QEMU keeps running and accepts the next client) and waits for both loops.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            await Task.WhenAll(_readLoop, _writeLoop).ConfigureAwait(false);
            return;
        }
        try { _socket.Shutdown(SocketShutdown.Both); }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        _reader.CancelPendingRead();
        _outgoing.Writer.TryComplete();
        await Task.WhenAll(_readLoop, _writeLoop).ConfigureAwait(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
    }
}
