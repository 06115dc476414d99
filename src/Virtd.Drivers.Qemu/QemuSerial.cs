using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Virtd.Core.Consoles;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// The daemon's end of one VM's serial port: a connection to QEMU's <c>socket</c> chardev (a listening socket the daemon
/// made and passed in, like the monitor's), read by one loop into the console's <see cref="ConsoleHub"/> and written by
/// one loop from the viewers' input. QEMU logs the port itself, so the daemon's absence loses no log; after a restart
/// the next daemon connects again and seeds the console's history from the log.
/// </summary>
internal sealed class QemuSerial
{
    private readonly string _path;
    private readonly string _owner;
    private readonly ILogger _log;
    private readonly Channel<byte[]> _input = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(64) { SingleReader = true });
    private Task _run = Task.CompletedTask;

    public QemuSerial(string path, string owner, ILogger log)
    {
        _path = path;
        _owner = owner;
        _log = log;
        Hub = new ConsoleHub((data, ct) => _input.Writer.WriteAsync(data.ToArray(), ct));
    }

    public ConsoleHub Hub { get; }

    /// <summary>Completes when the connection has ended (EOF, error, or <c>stop</c>); never faults.</summary>
    public Task Completion => _run;

    /// <summary>Puts the tail of the log into the console's history (after a daemon restart).</summary>
    public void Seed(string logPath)
    {
        try
        {
            using var fs = new FileStream(logPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var start = Math.Max(0, fs.Length - ConsoleHub.HistoryBytes);
            fs.Seek(start, SeekOrigin.Begin);
            var buffer = new byte[fs.Length - start];
            fs.ReadExactly(buffer);
            Hub.Publish(buffer);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>
    /// Connects (QEMU listens on a socket bound before it started, so this succeeds at once while it runs) and starts the
    /// loops; false when there is no serial socket (a VM started by a daemon that had none).
    /// </summary>
    public bool Start(CancellationToken stop)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(_path));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            _log.LogWarning("domain {Domain}: no serial console ({Path}: {Error})", _owner, _path, e.Message);
            return false;
        }
        _run = RunAsync(socket, stop);
        return true;
    }

    private async Task RunAsync(Socket socket, CancellationToken stop)
    {
        await Task.Yield();
        using var end = CancellationTokenSource.CreateLinkedTokenSource(stop);
        var writer = WriteLoopAsync(socket, end.Token);
        var buffer = new byte[4096]; // the port runs at ~11 KB/s
        try
        {
            while (true)
            {
                var n = await socket.ReceiveAsync(buffer, SocketFlags.None, end.Token).ConfigureAwait(false);
                if (n == 0) break;
                Hub.Publish(buffer.AsSpan(0, n));
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
        await end.CancelAsync().ConfigureAwait(false);
        await writer.ConfigureAwait(false);
        socket.Dispose();
    }

    private async Task WriteLoopAsync(Socket socket, CancellationToken stop)
    {
        try
        {
            await foreach (var chunk in _input.Reader.ReadAllAsync(stop).ConfigureAwait(false))
            {
                var sent = 0;
                while (sent < chunk.Length) sent += await socket.SendAsync(chunk.AsMemory(sent), SocketFlags.None, stop).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }
}
