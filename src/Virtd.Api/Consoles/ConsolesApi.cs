using System.Net.WebSockets;
using System.Text;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Api.Hosting;
using Virtd.Core.Consoles;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Errors;

namespace Virtd.Api.Consoles;

/// <summary>
/// A running domain's consoles over WebSockets (operator): the serial port (<c>/console</c>, raw bytes both ways, every
/// viewer sees the same output and any may type) and VNC (<c>/vnc</c>, RFB in binary frames, for noVNC); and the serial
/// log as text (<c>/console/log?tail=N</c>).
/// </summary>
public static class ConsolesApi
{
    /// <summary>Most lines <c>?tail=</c> may ask for; and most bytes a log answer carries.</summary>
    public const int MaxTailLines = 10_000;
    public const int MaxLogBytes = 4 * 1024 * 1024;

    public static IEndpointRouteBuilder MapConsolesApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/domains").WithTags("Consoles");
        g.MapGet("/{id}/console", ConsoleAsync).WithName("DomainConsole")
            .WithSummary("WebSocket to the guest's serial port: first the last 64 KiB of output, then what follows; frames sent are typed into the guest")
            .WithDescription("Upgrade with a WebSocket handshake (a plain GET gets 400 `websocket-required`). Output arrives as binary frames of " +
                "raw bytes; text or binary frames sent are the guest's input. Several viewers see the same output and any may type. A viewer " +
                "that falls more than 1 MiB behind is closed (1008); the stream closes (1000) when the domain stops and (1001) when the " +
                "daemon stops. With the session cookie the Origin must be this daemon's (403 `csrf-rejected`).")
            .Requires(Role.Operator).Produces(StatusCodes.Status101SwitchingProtocols).Problems(400, 404, 409);
        g.MapGet("/{id}/console/log", ConsoleLog).WithName("DomainConsoleLog")
            .WithSummary("The serial console's log as text: its last ?tail= lines (default 100, at most 10000; at most 4 MiB)")
            .Requires(Role.Operator).Produces<string>(StatusCodes.Status200OK, "text/plain").Problems(400, 404);
        g.MapGet("/{id}/vnc", VncAsync).WithName("DomainVnc")
            .WithSummary("WebSocket carrying RFB (VNC) to the domain's graphical console, as noVNC speaks it")
            .WithDescription("Upgrade with a WebSocket handshake (a plain GET gets 400 `websocket-required`); binary frames both ways. The " +
                "domain must run with VNC (`graphics.vnc`, by default on for domains with disks), else 409 `vnc-unavailable`. QEMU listens " +
                "nowhere: each connection is a socket handed to it over its monitor. No VNC password: the daemon's access control is the gate.")
            .Requires(Role.Operator).Produces(StatusCodes.Status101SwitchingProtocols).Problems(400, 404, 409);
        return app;
    }

    private static VirtdException NotWebSocket(string what) => new(ErrorCodes.WebSocketRequired, 400, "WebSocket required",
        $"{what} is a WebSocket: connect with a WebSocket handshake (Upgrade: websocket)");

    /// <summary>The checks before an upgrade: a WebSocket handshake, the domain running, and a browser's own origin.</summary>
    private static IVmInstance Running(string id, HttpContext http, DomainService svc, string what)
    {
        var domain = svc.Get(id);
        if (!http.WebSockets.IsWebSocketRequest) throw NotWebSocket(what);
        if (http.User is CallerPrincipal { Caller.Method: AuthMethod.Session } && BrowserSafety.CheckOrigin(http) is { } refused) throw refused;
        return domain.Instance ?? throw VirtdException.InvalidState($"domain '{domain.Name}' is not running ({RuntimeText(domain)}): it has no {what}");
    }

    private static string RuntimeText(DomainObject d) => Errors.EnumText.Name(d.View.Runtime.State);

    public static async Task ConsoleAsync(string id, HttpContext http, DomainService svc, DaemonStatus status, ILoggerFactory logs)
    {
        var vm = Running(id, http, svc, "serial console");
        var console = vm.Console ?? throw new VirtdException(ErrorCodes.ConsoleUnavailable, 409, "Console unavailable",
            $"the daemon cannot reach the serial port of domain '{id}' (its VM was started by a daemon without consoles: restart the domain)");
        using var ws = await http.WebSockets.AcceptWebSocketAsync(Accept(http)).ConfigureAwait(false);
        using var viewer = console.Attach();
        using var end = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted, status.RequestsEnding, viewer.Dropped);
        var input = PumpInputAsync(ws, console, end.Token);
        var (closeStatus, reason) = await PumpOutputAsync(ws, viewer, end.Token).ConfigureAwait(false);
        if (viewer.Dropped.IsCancellationRequested)
        {
            logs.CreateLogger("Virtd.Api.Consoles").LogInformation("console of {Domain}: a viewer was dropped: {Reason}", id, viewer.EndReason);
            ws.Abort(); // it does not read: a close frame would wait behind what it never read
        }
        else if (status.RequestsEnding.IsCancellationRequested) (closeStatus, reason) = (WebSocketCloseStatus.EndpointUnavailable, "the daemon is stopping");
        // Close first, then let the client answer it: cancelling a pending receive would abort the socket instead.
        await CloseAsync(ws, closeStatus, reason).ConfigureAwait(false);
        try { await input.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        await end.CancelAsync().ConfigureAwait(false);
        await input.ConfigureAwait(false);
    }

    /// <summary>noVNC asks for the <c>binary</c> subprotocol; a browser fails a handshake that does not answer one it asked for.</summary>
    private static WebSocketAcceptContext Accept(HttpContext http) => new()
    {
        KeepAliveInterval = TimeSpan.FromSeconds(15),
        SubProtocol = http.WebSockets.WebSocketRequestedProtocols.Contains("binary") ? "binary" : null,
    };

    private static async Task<(WebSocketCloseStatus, string)> PumpOutputAsync(WebSocket ws, ConsoleViewer viewer, CancellationToken ct)
    {
        var batch = new List<byte[]>();
        try
        {
            while (await viewer.ReadAsync(ct).ConfigureAwait(false) is { } first)
            {
                batch.Clear();
                batch.Add(first);
                viewer.TryReadMore(batch, 64 * 1024);
                for (var i = 0; i < batch.Count; i++)
                    await ws.SendAsync(batch[i], WebSocketMessageType.Binary, i == batch.Count - 1, ct).ConfigureAwait(false);
            }
            return (WebSocketCloseStatus.NormalClosure, viewer.EndReason ?? "the console ended");
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException)
        {
            return viewer.Dropped.IsCancellationRequested
                ? (WebSocketCloseStatus.PolicyViolation, viewer.EndReason ?? "too slow")
                : (WebSocketCloseStatus.NormalClosure, "closed");
        }
    }

    private static async Task PumpInputAsync(WebSocket ws, IVmConsole console, CancellationToken ct)
    {
        var buffer = new byte[4096];
        try
        {
            while (true)
            {
                var r = await ws.ReceiveAsync(buffer, ct).ConfigureAwait(false);
                if (r.MessageType == WebSocketMessageType.Close) return;
                if (r.Count > 0) await console.WriteAsync(buffer.AsMemory(0, r.Count).ToArray(), ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException)
        {
        }
    }

    private static async Task CloseAsync(WebSocket ws, WebSocketCloseStatus status, string reason)
    {
        if (ws.State is not (WebSocketState.Open or WebSocketState.CloseReceived)) return;
        // A close reason is at most 123 bytes.
        var text = Encoding.UTF8.GetByteCount(reason) > 120 ? reason[..60] : reason;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try { await ws.CloseOutputAsync(status, text, timeout.Token).ConfigureAwait(false); }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException) { ws.Abort(); }
    }

    public static async Task VncAsync(string id, HttpContext http, DomainService svc, DaemonStatus status)
    {
        var vm = Running(id, http, svc, "VNC console");
        Stream rfb;
        using (var open = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted))
        {
            open.CancelAfter(TimeSpan.FromSeconds(30));
            rfb = await vm.OpenVncAsync(open.Token).ConfigureAwait(false);
        }
        await using (rfb.ConfigureAwait(false))
        {
            using var ws = await http.WebSockets.AcceptWebSocketAsync(Accept(http)).ConfigureAwait(false);
            using var end = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted, status.RequestsEnding);
            var toClient = CopyToWebSocketAsync(rfb, ws, end.Token);
            var toServer = CopyFromWebSocketAsync(ws, rfb, end.Token);
            await Task.WhenAny(toClient, toServer).ConfigureAwait(false);
            rfb.Close(); // unblocks a read QEMU will never answer
            await toClient.ConfigureAwait(false);
            await CloseAsync(ws, status.RequestsEnding.IsCancellationRequested ? WebSocketCloseStatus.EndpointUnavailable : WebSocketCloseStatus.NormalClosure,
                status.RequestsEnding.IsCancellationRequested ? "the daemon is stopping" : "the VNC connection ended").ConfigureAwait(false);
            try { await toServer.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false); }
            catch (TimeoutException) { }
            await end.CancelAsync().ConfigureAwait(false);
            await toServer.ConfigureAwait(false);
        }
    }

    private static async Task CopyToWebSocketAsync(Stream from, WebSocket ws, CancellationToken ct)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                var n = await from.ReadAsync(buffer, ct).ConfigureAwait(false);
                if (n == 0) return;
                await ws.SendAsync(buffer.AsMemory(0, n), WebSocketMessageType.Binary, true, ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException or ObjectDisposedException) { }
    }

    private static async Task CopyFromWebSocketAsync(WebSocket ws, Stream to, CancellationToken ct)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var r = await ws.ReceiveAsync(buffer, ct).ConfigureAwait(false);
                if (r.MessageType == WebSocketMessageType.Close) return;
                await to.WriteAsync(buffer.AsMemory(0, r.Count), ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException or ObjectDisposedException) { }
    }

    public static IResult ConsoleLog(string id, int? tail, DomainService svc, DriverCatalog drivers)
    {
        var domain = svc.Get(id);
        var lines = tail ?? 100;
        if (lines is < 1 or > MaxTailLines) throw VirtdException.Validation("tail", $"must be between 1 and {MaxTailLines}");
        var path = drivers.Find(domain.Driver)?.ConsoleLogPath(domain.Uuid);
        var bytes = path is null ? TailOfHistory(domain, lines) : Tail(path, lines);
        return Results.Bytes(bytes, "text/plain; charset=utf-8");
    }

    /// <summary>A driver that keeps no log (the simulated one): what the console holds now.</summary>
    private static byte[] TailOfHistory(DomainObject domain, int lines)
    {
        if (domain.Instance?.Console is not { } console) return [];
        using var viewer = console.Attach();
        var chunks = new List<byte[]>();
        viewer.TryReadMore(chunks, ConsoleHub.HistoryBytes);
        var all = chunks.SelectMany(c => c).ToArray();
        return all[StartOfLastLines(all, all.Length, lines)..];
    }

    /// <summary>
    /// The last <paramref name="lines"/> lines of the file (at most <see cref="MaxLogBytes"/>), found by reading back from
    /// its end a block at a time: a short tail of a long log costs a few KiB.
    /// </summary>
    public static byte[] Tail(string path, int lines)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 1);
            var length = fs.Length;
            var block = new byte[8192];
            var position = length;
            var floor = Math.Max(0, length - MaxLogBytes);
            var start = floor;
            var found = 0;
            var end = length;
            while (position > floor)
            {
                var n = (int)Math.Min(block.Length, position - floor);
                position -= n;
                fs.Seek(position, SeekOrigin.Begin);
                fs.ReadExactly(block, 0, n);
                for (var i = n - 1; i >= 0; i--)
                {
                    if (block[i] != (byte)'\n' || position + i == end - 1) continue; // a last line's own newline ends it
                    if (++found == lines)
                    {
                        start = position + i + 1;
                        goto done;
                    }
                }
            }
            done:
            var result = new byte[length - start];
            fs.Seek(start, SeekOrigin.Begin);
            fs.ReadExactly(result);
            return result;
        }
        catch (FileNotFoundException) { return []; }
        catch (DirectoryNotFoundException) { return []; }
    }

    /// <summary>Where the last <paramref name="lines"/> lines of <paramref name="text"/>[0..<paramref name="end"/>) begin.</summary>
    private static int StartOfLastLines(byte[] text, int end, int lines)
    {
        var found = 0;
        for (var i = end - 1; i >= 0; i--)
        {
            if (text[i] != (byte)'\n' || i == end - 1) continue;
            if (++found == lines) return i + 1;
        }
        return 0;
    }
}
