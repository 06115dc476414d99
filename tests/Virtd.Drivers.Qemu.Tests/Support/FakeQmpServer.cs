using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Virtd.Drivers.Qemu.Tests.Support;

/// <summary>
/// A scripted QMP peer on a real Unix socket, for protocol edge cases only (real QEMU covers the rest).
/// The script receives each command the client sends and decides what to write back; a command the
/// script did not expect, or a script step that never happens, fails the test through <see cref="Completion"/>.
/// </summary>
public sealed class FakeQmpServer : IAsyncDisposable
{
    public const string Greeting = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"fake\"}, \"capabilities\": []}}";

    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();

    private FakeQmpServer(string path, Socket listener, Func<Connection, Task> script)
    {
        Path = path;
        _listener = listener;
        Completion = RunAsync(script);
    }

    public string Path { get; }

    /// <summary>Completes when the script has run to its end; faults when it did not (an unexpected or missing command).</summary>
    public Task Completion { get; }

    public static FakeQmpServer Start(string path, Func<Connection, Task> script)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(4);
        return new FakeQmpServer(path, listener, script);
    }

    /// <summary>A path for a socket that does not exist yet.</summary>
    public static string NewPath() => System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"fq-{Guid.NewGuid():N}.sock");

    private async Task RunAsync(Func<Connection, Task> script)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(TimeSpan.FromSeconds(20));
        using var socket = await _listener.AcceptAsync(timeout.Token);
        await using var connection = new Connection(socket, timeout.Token);
        await script(connection);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        try { File.Delete(Path); }
        catch (IOException) { }
        try { await Completion; }
        catch (Exception) { } // a test that wants the script's outcome awaits Completion itself
    }

    public sealed class Connection(Socket socket, CancellationToken ct) : IAsyncDisposable
    {
        private readonly NetworkStream _stream = new(socket, ownsSocket: false);
        private readonly StreamReader _reader = new(new NetworkStream(socket, ownsSocket: false), Encoding.UTF8);

        /// <summary>Writes exactly these bytes (no newline added): lets a test split or join messages.</summary>
        public async Task WriteRawAsync(string text)
        {
            await _stream.WriteAsync(Encoding.UTF8.GetBytes(text), ct);
            await _stream.FlushAsync(ct);
        }

        public Task SendAsync(string message) => WriteRawAsync(message + "\r\n");

        public Task GreetAsync() => SendAsync(Greeting);

        /// <summary>Reads the next command; fails unless it is <paramref name="command"/>. Returns its id.</summary>
        public async Task<long> ExpectAsync(string command)
        {
            var line = await _reader.ReadLineAsync(ct) ?? throw new InvalidOperationException($"client closed; expected '{command}'");
            using var doc = JsonDocument.Parse(line);
            var got = doc.RootElement.GetProperty("execute").GetString();
            if (got != command) throw new InvalidOperationException($"expected '{command}', got '{got}': {line}");
            return doc.RootElement.GetProperty("id").GetInt64();
        }

        public Task ReplyAsync(long id, string value = "{}") => SendAsync($"{{\"return\": {value}, \"id\": {id}}}");

        /// <summary>Greets and accepts qmp_capabilities: what every real QEMU does first.</summary>
        public async Task HandshakeAsync()
        {
            await GreetAsync();
            await ReplyAsync(await ExpectAsync("qmp_capabilities"));
        }

        /// <summary>Fails when the client sends any further command before it closes.</summary>
        public async Task ExpectNoMoreAsync()
        {
            var line = await _reader.ReadLineAsync(ct);
            if (line is not null) throw new InvalidOperationException($"unexpected command: {line}");
        }

        public void Close() => socket.Shutdown(SocketShutdown.Both);

        public async ValueTask DisposeAsync()
        {
            await _stream.DisposeAsync();
            _reader.Dispose();
        }
    }
}
