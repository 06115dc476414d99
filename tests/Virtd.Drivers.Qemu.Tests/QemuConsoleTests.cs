using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using Virtd.Drivers.Qemu.Tests.Support;
using Virtd.Testing;

namespace Virtd.Drivers.Qemu.Tests;

/// <summary>The serial console and VNC of real QEMU guests, over the daemon's WebSockets, without a browser.</summary>
[Collection(QemuCollection.Name)]
public class QemuConsoleTests
{
    private static string ConsolePath(string name) => $"/api/v1/domains/{name}/console";

    [Fact]
    public async Task Console_TwoViewers_SeeTheReadyLine_AndWhatEitherTypesRunsInTheGuestShell()
    {
        await using var app = new QemuApp(testGuest: true, kestrel: true);
        await app.Http.DefineAsync(TestGuest.Definition("c1"));
        await app.StartAsync("c1");
        await using var first = await ConsoleClient.ConnectAsync(app.Address!, ConsolePath("c1"), app.App.AdminToken);
        await first.WaitForAsync(TestGuest.ReadyLine, TimeSpan.FromSeconds(60));
        // The second viewer comes later: the history gives it the ready line too.
        await using var second = await ConsoleClient.ConnectAsync(app.Address!, ConsolePath("c1"), app.App.AdminToken);
        await second.WaitForAsync(TestGuest.ReadyLine);

        // The shell computes what it prints, so the answer is not merely the typed line echoed back.
        await first.SendAsync("\recho hi-$((6*7))-one\r");
        await first.WaitForAsync("hi-42-one");
        await second.WaitForAsync("hi-42-one");
        await second.SendAsync("echo hi-$((7*8))-two\r");
        await first.WaitForAsync("hi-56-two");
        await second.WaitForAsync("hi-56-two");

        // The log holds the run as text.
        var log = await app.Http.GetStringAsync("/api/v1/domains/c1/console/log?tail=50");
        Assert.Contains(TestGuest.ReadyLine, log);
        Assert.Contains("hi-56-two", log);
        var two = await app.Http.GetStringAsync("/api/v1/domains/c1/console/log?tail=2");
        Assert.True(two.TrimEnd('\n').Split('\n').Length <= 2, two);

        // The domain stops: each viewer's stream ends with a normal close.
        Assert.Equal("succeeded", (await app.Http.ActAsync("c1", "destroy", wait: 30)).Str("state"));
        await first.WaitClosedAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(WebSocketCloseStatus.NormalClosure, first.CloseStatus);
    }

    [Fact]
    public async Task Console_AViewerThatNeverReads_SlowsNeitherTheGuestNorTheOthers_AndAFloodKeepsMemoryBounded()
    {
        await using var app = new QemuApp(testGuest: true, kestrel: true);
        await app.Http.DefineAsync(TestGuest.Definition("flood"));
        await app.StartAsync("flood");
        await using var reader = await ConsoleClient.ConnectAsync(app.Address!, ConsolePath("flood"), app.App.AdminToken);
        await reader.WaitForAsync(TestGuest.ReadyLine, TimeSpan.FromSeconds(60));
        await using var stuck = await ConsoleClient.ConnectAsync(app.Address!, ConsolePath("flood"), app.App.AdminToken, read: false);

        var before = GC.GetTotalMemory(forceFullCollection: true);
        var clock = Stopwatch.StartNew();
        // The guest writes as fast as its serial port goes (QEMU paces a 16550 at its baud rate: ~11 KB/s at 115200) for
        // 10 s; the viewer that never reads falls behind. (Dropping a viewer once it is 1 MiB behind: ConsoleHubTests.)
        await reader.SendAsync("timeout 10 yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz; echo flood-$((1+1))-done\r");
        await reader.WaitForAsync("flood-2-done", TimeSpan.FromSeconds(120));
        var Bytes = reader.Received;
        var took = clock.Elapsed;
        var after = GC.GetTotalMemory(forceFullCollection: true);
        Console.WriteLine($"flood: {Bytes / 1e3:0} KB through the console in {took.TotalSeconds:0.0} s ({Bytes / 1e3 / took.TotalSeconds:0.0} KB/s); " +
                          $"managed heap {before / 1048576.0:0.0} → {after / 1048576.0:0.0} MiB");
        Assert.True(after - before < 32L * 1024 * 1024, $"the managed heap grew by {(after - before) / 1048576.0:0.0} MiB");
        // The guest was not held back by the viewer that never reads: it wrote at its port's pace (≥ 5 KB/s here).
        Assert.True(reader.Received > 50_000, $"the reading viewer saw only {reader.Received} chars");

        // The stuck viewer was dropped (the server aborted it); the reading one still types and sees.
        await QemuHost.WaitUntilAsync(() => stuck.Socket.State is WebSocketState.Aborted or WebSocketState.Closed or WebSocketState.CloseReceived,
            "the stuck viewer to be dropped", TimeSpan.FromSeconds(30)).ContinueWith(_ => { });
        await reader.SendAsync("echo after-$((2*5))\r");
        await reader.WaitForAsync("after-10");
    }

    [Fact]
    public async Task Console_ReaderToken_IsRefused_AndAPlainGetIsTold400()
    {
        await using var app = new QemuApp(kestrel: true);
        await app.DefineDisklessAsync("ro");
        await app.StartAsync("ro");
        var reader = (await (await app.Http.PostJsonAsync("/api/v1/tokens", new { name = "r", role = "reader" })).ReadJsonAsync()).Str("secret")!;
        Assert.Equal(403, await ConsoleClient.RefusedAsync(app.Address!, ConsolePath("ro"), reader));
        Assert.Equal(403, await ConsoleClient.RefusedAsync(app.Address!, "/api/v1/domains/ro/vnc", reader));
        var plain = await app.Http.GetAsync(ConsolePath("ro"));
        Assert.Equal(400, (int)plain.StatusCode);
        Assert.Equal("websocket-required", (await plain.ReadJsonAsync()).Str("code"));
    }

    [Fact]
    public async Task Vnc_OfADisklessVmWithVnc_SpeaksRfb_AndShowsAScreen()
    {
        await using var app = new QemuApp(kestrel: true);
        await app.DefineDisklessAsync("v1", new { graphics = new { vnc = true } });
        await app.DefineDisklessAsync("v0");
        await app.StartAsync("v1");
        await app.StartAsync("v0");
        Assert.Equal(409, await ConsoleClient.RefusedAsync(app.Address!, "/api/v1/domains/v0/vnc", app.App.AdminToken));

        await using var vnc = await ConsoleClient.ConnectAsync(app.Address!, "/api/v1/domains/v1/vnc", app.App.AdminToken, read: false);
        var ws = vnc.Socket;
        Assert.Equal("RFB 003.008\n", Encoding.ASCII.GetString(await ReadAsync(ws, 12)));
        await ws.SendAsync("RFB 003.008\n"u8.ToArray(), WebSocketMessageType.Binary, true, default);
        var types = await ReadAsync(ws, 1);
        var list = await ReadAsync(ws, types[0]);
        Assert.Contains((byte)1, list); // "None": the daemon's access control is the gate
        await ws.SendAsync(new byte[] { 1 }, WebSocketMessageType.Binary, true, default);
        Assert.Equal(new byte[4], await ReadAsync(ws, 4)); // SecurityResult OK
        await ws.SendAsync(new byte[] { 1 }, WebSocketMessageType.Binary, true, default); // ClientInit, shared
        var init = await ReadAsync(ws, 24);
        var (width, height) = (init[0] << 8 | init[1], init[2] << 8 | init[3]);
        await ReadAsync(ws, init[20] << 24 | init[21] << 16 | init[22] << 8 | init[23]); // the name
        Assert.True(width >= 320 && height >= 200, $"{width}x{height}");
        // FramebufferUpdateRequest for the whole screen: an update comes back (message type 0).
        await ws.SendAsync(new byte[] { 3, 0, 0, 0, 0, 0, (byte)(width >> 8), (byte)width, (byte)(height >> 8), (byte)height },
            WebSocketMessageType.Binary, true, default);
        Assert.Equal(0, (await ReadAsync(ws, 1))[0]);
    }

    private static readonly Dictionary<WebSocket, Queue<byte>> Pending = [];

    /// <summary>Exactly <paramref name="count"/> bytes of the RFB stream, whatever the frames.</summary>
    private static async Task<byte[]> ReadAsync(WebSocket ws, int count)
    {
        if (!Pending.TryGetValue(ws, out var queue)) Pending[ws] = queue = new Queue<byte>();
        var buffer = new byte[64 * 1024];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (queue.Count < count)
        {
            var r = await ws.ReceiveAsync(buffer, timeout.Token);
            Assert.NotEqual(WebSocketMessageType.Close, r.MessageType);
            for (var i = 0; i < r.Count; i++) queue.Enqueue(buffer[i]);
        }
        var result = new byte[count];
        for (var i = 0; i < count; i++) result[i] = queue.Dequeue();
        return result;
    }

    [Fact]
    public async Task Console_SurvivesADaemonRestart_WithItsHistory_AndStillTakesInput()
    {
        QemuHost.RequireQemu();
        string[] args = ["--DefaultDriver", "qemu", "--Qemu:MonitorTimeout", "00:00:02", "--Logging:LogLevel:Default", "Warning",
            "--Storage:Pools:guest", TestGuest.Directory];
        var first = DaemonProcess.Start(args);
        var run = first.RunDirectory;
        try
        {
            await first.WaitReadyAsync();
            await first.Http.DefineAsync(TestGuest.Definition("keep"));
            Assert.Equal("succeeded", (await first.Http.ActAsync("keep", "start", wait: 60)).Str("state"));
            var address = new Uri($"http://127.0.0.1:{first.Port}");
            await using (var before = await ConsoleClient.ConnectAsync(address, ConsolePath("keep"), first.AdminToken))
            {
                await before.WaitForAsync(TestGuest.ReadyLine, TimeSpan.FromSeconds(60));
                await before.SendAsync("\recho before-$((3*3))\r");
                await before.WaitForAsync("before-9");
            }
            await first.KillAsync();

            await using var second = DaemonProcess.Start(args, stateDirectory: first.StateDirectory, runDirectory: run);
            await second.WaitReadyAsync();
            await VirtdHttp.PollAsync(() => second.Http.GetDomainAsync("keep"), d => d.Str("reason") == "reconnected", "'keep' to be reconnected");
            await using var after = await ConsoleClient.ConnectAsync(new Uri($"http://127.0.0.1:{second.Port}"), ConsolePath("keep"), second.AdminToken);
            await after.WaitForAsync("before-9"); // history, from the log QEMU kept
            await after.SendAsync("echo after-$((4*4))\r");
            await after.WaitForAsync("after-16");
            Assert.Equal("succeeded", (await second.Http.ActAsync("keep", "destroy", wait: 30)).Str("state"));
        }
        finally
        {
            await first.DisposeAsync();
            QemuHost.KillAll(run);
        }
    }
}
