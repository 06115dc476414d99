using System.Net.WebSockets;
using System.Text;

namespace Virtd.Testing;

/// <summary>
/// A WebSocket viewer of a domain's serial console, as a test drives it: everything received is kept as text (one
/// reader task, owned and awaited on dispose), and <see cref="WaitForAsync"/> polls it with a deadline.
/// </summary>
public sealed class ConsoleClient : IAsyncDisposable
{
    private readonly ClientWebSocket _ws;
    private readonly StringBuilder _text = new();
    private readonly Lock _lock = new();
    private readonly Task _reader;
    private readonly CancellationTokenSource _stop = new();

    private ConsoleClient(ClientWebSocket ws, bool read)
    {
        _ws = ws;
        _reader = read ? ReadAsync() : Task.CompletedTask;
    }

    public WebSocket Socket => _ws;

    /// <summary>How the server closed the stream, once it has.</summary>
    public WebSocketCloseStatus? CloseStatus { get; private set; }
    public string? CloseReason { get; private set; }

    /// <param name="read">False for a viewer that never reads (a slow client).</param>
    public static async Task<ConsoleClient> ConnectAsync(Uri httpAddress, string path, string token, bool read = true)
    {
        var ws = new ClientWebSocket();
        ws.Options.SetRequestHeader("Authorization", "Bearer " + token);
        var uri = new UriBuilder(httpAddress) { Scheme = httpAddress.Scheme == "https" ? "wss" : "ws", Path = path }.Uri;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await ws.ConnectAsync(uri, timeout.Token);
        }
        catch
        {
            ws.Dispose();
            throw;
        }
        return new ConsoleClient(ws, read);
    }

    /// <summary>What the handshake answered when it was refused (status code), or null when it upgraded.</summary>
    public static async Task<int?> RefusedAsync(Uri httpAddress, string path, string token)
    {
        using var ws = new ClientWebSocket();
        ws.Options.SetRequestHeader("Authorization", "Bearer " + token);
        ws.Options.CollectHttpResponseDetails = true;
        var uri = new UriBuilder(httpAddress) { Scheme = "ws", Path = path }.Uri;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await ws.ConnectAsync(uri, timeout.Token);
            return null;
        }
        catch (WebSocketException)
        {
            return (int)ws.HttpStatusCode;
        }
    }

    /// <summary>The text received, its last 256 K characters.</summary>
    public string Text
    {
        get { lock (_lock) return _text.ToString(); }
    }

    /// <summary>Characters received in all.</summary>
    public long Received
    {
        get { lock (_lock) return _received; }
    }

    private long _received;
    private const int Keep = 256 * 1024;

    private async Task ReadAsync()
    {
        var buffer = new byte[64 * 1024];
        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[Encoding.UTF8.GetMaxCharCount(buffer.Length)];
        try
        {
            while (true)
            {
                var r = await _ws.ReceiveAsync(buffer, _stop.Token);
                if (r.MessageType == WebSocketMessageType.Close)
                {
                    CloseStatus = r.CloseStatus;
                    CloseReason = r.CloseStatusDescription;
                    return;
                }
                var n = decoder.GetChars(buffer, 0, r.Count, chars, 0);
                lock (_lock)
                {
                    _text.Append(chars, 0, n);
                    _received += n;
                    if (_text.Length > 2 * Keep) _text.Remove(0, _text.Length - Keep);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException) { }
    }

    public async Task SendAsync(string text)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await _ws.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, true, timeout.Token);
    }

    /// <summary>Waits until the received text contains <paramref name="text"/> (<paramref name="times"/> times); fails at the deadline.</summary>
    public async Task WaitForAsync(string text, TimeSpan? timeout = null, int times = 1)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(30));
        while (Count(Text, text) < times)
        {
            if (DateTime.UtcNow > deadline)
            {
                var seen = Text;
                Assert.Fail($"timed out waiting for '{text}' on the console; it showed {seen.Length} chars, ending: {seen[Math.Max(0, seen.Length - 600)..]}");
            }
            if (_reader.IsCompleted && Count(Text, text) < times) Assert.Fail($"the console closed ({CloseStatus} {CloseReason}) before '{text}'; it showed: {Text}");
            await Task.Delay(20);
        }
    }

    /// <summary>Waits until the server has closed the stream.</summary>
    public async Task WaitClosedAsync(TimeSpan timeout)
    {
        await _reader.WaitAsync(timeout);
    }

    public static int Count(string haystack, string needle)
    {
        var n = 0;
        for (var i = haystack.IndexOf(needle, StringComparison.Ordinal); i >= 0; i = haystack.IndexOf(needle, i + needle.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    public async ValueTask DisposeAsync()
    {
        if (_ws.State == WebSocketState.Open)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try { await _ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token); }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException) { }
        }
        await _stop.CancelAsync();
        await _reader;
        _ws.Dispose();
        _stop.Dispose();
    }
}
