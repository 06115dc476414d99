using System.Net.Sockets;
using System.Text;

namespace Virtd.Testing;

/// <summary>The service manager's end of sd_notify: a bound Unix datagram socket (a path, or <c>@name</c>).</summary>
public sealed class NotifySocket : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

    private NotifySocket(string name)
    {
        Name = name;
        _socket.Bind(new UnixDomainSocketEndPoint(name.StartsWith('@') ? "\0" + name[1..] : name));
    }

    /// <summary>What goes in <c>NOTIFY_SOCKET</c>.</summary>
    public string Name { get; }

    public static NotifySocket Bind(string name) => new(name);

    /// <summary>The next datagram as text; fails the test if none comes within <paramref name="timeout"/> (default 15 s).</summary>
    public async Task<string> ReceiveAsync(TimeSpan? timeout = null)
    {
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(timeout ?? VirtdHttp.Patience);
        try
        {
            var n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"no notification on {Name} within {timeout ?? VirtdHttp.Patience}");
            throw;
        }
    }

    /// <summary>The next datagram, or null when none is there within <paramref name="timeout"/>.</summary>
    public async Task<string?> TryReceiveAsync(TimeSpan timeout)
    {
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            var n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    public void Dispose() => _socket.Dispose();
}
