using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Core.Errors;
using Virtd.Testing;
using Virtd.Drivers.Qemu.Monitor;
using Virtd.Drivers.Qemu.Tests.Support;

namespace Virtd.Drivers.Qemu.Tests;

public class QmpMonitorTests
{
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(10);

    private static Task<QmpMonitor> ConnectAsync(string path, TimeProvider? time = null) =>
        QmpMonitor.ConnectAsync(path, "vm1", CommandTimeout, time ?? TimeProvider.System, NullLogger.Instance,
            new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);

    [Fact]
    public async Task Connect_ReadsTheGreetingAndEntersCommandMode()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            await c.ExpectNoMoreAsync();
        });

        await using (var monitor = await ConnectAsync(server.Path))
        {
            Assert.Equal("7.2.0", monitor.Version);
        }
        await server.Completion;
    }

    [Fact]
    public async Task Connect_RetriesWhileTheSocketDoesNotExistYet()
    {
        var path = FakeQmpServer.NewPath();
        var connecting = ConnectAsync(path);
        await Task.Delay(150); // QEMU creates its socket a little after it starts: let the client retry meanwhile
        Assert.False(connecting.IsCompleted);

        await using var server = FakeQmpServer.Start(path, c => c.HandshakeAsync());
        await using var monitor = await connecting;
        await server.Completion;
    }

    [Fact]
    public async Task Connect_GivesUpAtTheCallersDeadline()
    {
        var path = FakeQmpServer.NewPath();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            QmpMonitor.ConnectAsync(path, "vm1", CommandTimeout, TimeProvider.System, NullLogger.Instance, cts.Token));
    }

    [Fact]
    public async Task Execute_MatchesRepliesById_WithEventsInterleaved()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            var first = await c.ExpectAsync("query-status");
            var second = await c.ExpectAsync("query-name");
            await c.SendAsync("{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}");
            await c.ReplyAsync(second, "{\"name\": \"vm1\"}");
            await c.SendAsync("{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 2, \"microseconds\": 0}}");
            await c.ReplyAsync(first, "{\"status\": \"running\", \"running\": true}");
        });
        await using var monitor = await ConnectAsync(server.Path);

        var status = monitor.ExecuteAsync("query-status", null, CommandTimeout, CancellationToken.None);
        var name = monitor.ExecuteAsync("query-name", null, CommandTimeout, CancellationToken.None);

        Assert.Equal("running", (await status).GetProperty("status").GetString());
        Assert.Equal("vm1", (await name).GetProperty("name").GetString());
        Assert.Equal("STOP", (await monitor.Events.ReadAsync()).Name);
        Assert.Equal("RESUME", (await monitor.Events.ReadAsync()).Name);
        await server.Completion;
    }

    [Fact]
    public async Task Execute_HandlesMessagesSplitAcrossWritesAndSeveralInOneWrite()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            var a = await c.ExpectAsync("query-status");
            await c.WriteRawAsync("{\"return\": {\"stat");
            await Task.Delay(30);
            await c.WriteRawAsync("us\": \"paused\"}, \"i");
            await Task.Delay(30);
            await c.WriteRawAsync($"d\": {a}}}\r");
            await Task.Delay(30);
            await c.WriteRawAsync("\n");
            var b = await c.ExpectAsync("stop");
            var d = await c.ExpectAsync("cont");
            await c.WriteRawAsync($"{{\"event\": \"STOP\"}}\r\n{{\"return\": {{}}, \"id\": {b}}}\r\n{{\"event\": \"RESUME\"}}\r\n{{\"return\": {{}}, \"id\": {d}}}\r\n");
        });
        await using var monitor = await ConnectAsync(server.Path);

        var status = await monitor.ExecuteAsync("query-status", null, CommandTimeout, CancellationToken.None);
        var stop = monitor.ExecuteAsync("stop", null, CommandTimeout, CancellationToken.None);
        var cont = monitor.ExecuteAsync("cont", null, CommandTimeout, CancellationToken.None);
        await Task.WhenAll(stop, cont);

        Assert.Equal("paused", status.GetProperty("status").GetString());
        Assert.Equal("STOP", (await monitor.Events.ReadAsync()).Name);
        Assert.Equal("RESUME", (await monitor.Events.ReadAsync()).Name);
        await server.Completion;
    }

    [Fact]
    public async Task Execute_ErrorReply_FailsHypervisorErrorWithQemusOwnText()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            var id = await c.ExpectAsync("cont");
            await c.SendAsync($"{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"Resetting the Virtual Machine is required\"}}}}");
        });
        await using var monitor = await ConnectAsync(server.Path);

        var e = await Assert.ThrowsAsync<VirtdException>(() => monitor.ExecuteAsync("cont", null, CommandTimeout, CancellationToken.None));

        Assert.Equal(ErrorCodes.HypervisorError, e.Code);
        Assert.Contains("Resetting the Virtual Machine is required", e.Detail);
        await server.Completion;
    }

    [Fact]
    public async Task Garbage_IsSkipped_AndTheConnectionGoesOn()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            var id = await c.ExpectAsync("query-status");
            await c.SendAsync("this is not json");
            await c.SendAsync("[\"neither\", \"is\", \"this\"]");
            await c.SendAsync("");
            await c.SendAsync("{\"no\": \"known shape\"}");
            await c.ReplyAsync(id, "{\"status\": \"running\"}");
            await c.ExpectNoMoreAsync();
        });
        await using var monitor = await ConnectAsync(server.Path);

        var status = await monitor.ExecuteAsync("query-status", null, CommandTimeout, CancellationToken.None);

        Assert.Equal("running", status.GetProperty("status").GetString());
        Assert.Null(monitor.CloseReason);
        await monitor.DisposeAsync();
        await server.Completion;
    }

    [Fact]
    public async Task Disconnect_MidCommand_FailsTheCommandAndEndsTheConnection()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            await c.SendAsync("{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-signal\"}}");
            await c.ExpectAsync("query-status");
            c.Close();
        });
        await using var monitor = await ConnectAsync(server.Path);

        var e = await Assert.ThrowsAsync<VirtdException>(() => monitor.ExecuteAsync("query-status", null, CommandTimeout, CancellationToken.None));

        Assert.Equal(ErrorCodes.HypervisorError, e.Code);
        Assert.Contains("closed during 'query-status'", e.Detail);
        await monitor.Completion.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.NotNull(monitor.CloseReason);
        // The event sent before the end is still delivered, then the queue ends.
        var events = new List<string>();
        await foreach (var ev in monitor.Events.ReadAllAsync()) events.Add(ev.Name);
        Assert.Equal(["SHUTDOWN"], events);
        // And later commands fail at once instead of hanging.
        var later = await Assert.ThrowsAsync<VirtdException>(() => monitor.ExecuteAsync("cont", null, CommandTimeout, CancellationToken.None));
        Assert.Equal(ErrorCodes.HypervisorError, later.Code);
        await server.Completion;
    }

    [Fact]
    public async Task Timeout_FailsMonitorTimeout_AndTheLateReplyIsDiscarded()
    {
        var clock = new FakeClock();
        var stopReceived = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var timedOut = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            stopReceived.SetResult(await c.ExpectAsync("stop"));
            await timedOut.Task;
            await c.ReplyAsync(stopReceived.Task.Result, "{\"late\": true}");
            var next = await c.ExpectAsync("query-status");
            await c.ReplyAsync(next, "{\"status\": \"paused\"}");
        });
        await using var monitor = await ConnectAsync(server.Path, clock);

        var stop = monitor.ExecuteAsync("stop", null, TimeSpan.FromSeconds(3), CancellationToken.None);
        await stopReceived.Task.WaitAsync(TimeSpan.FromSeconds(10));
        clock.Advance(TimeSpan.FromSeconds(3));
        var e = await Assert.ThrowsAsync<VirtdException>(() => stop);
        timedOut.SetResult();

        Assert.Equal(ErrorCodes.MonitorTimeout, e.Code);
        Assert.Contains("vm1", e.Detail);
        var status = await monitor.ExecuteAsync("query-status", null, TimeSpan.FromSeconds(3), CancellationToken.None);
        Assert.Equal("paused", status.GetProperty("status").GetString()); // not the late reply to 'stop'
        await server.Completion;
    }

    [Fact]
    public async Task Dispose_ClosesTheConnection_ThePeerSeesEndOfFile()
    {
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            await c.ExpectNoMoreAsync();
        });
        var monitor = await ConnectAsync(server.Path);

        await monitor.DisposeAsync();

        await server.Completion.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal("closed by virtd", monitor.CloseReason);
        Assert.True(monitor.Completion.IsCompleted);
    }

    [Fact]
    public async Task Cancel_FailsTheCommandWithCancellation()
    {
        var received = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            await c.ExpectAsync("stop");
            received.SetResult();
            await c.ExpectNoMoreAsync();
        });
        var monitor = await ConnectAsync(server.Path);
        using var cts = new CancellationTokenSource();

        var stop = monitor.ExecuteAsync("stop", null, CommandTimeout, cts.Token);
        await received.Task.WaitAsync(TimeSpan.FromSeconds(10));
        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stop);
        await monitor.DisposeAsync();
        await server.Completion;
    }

    [Fact]
    public async Task ASecondClient_GetsNoGreetingWhileTheFirstIsConnected_AsWithQemu()
    {
        // The fake accepts only one client, like QEMU: a second connect queues and must be bounded by its deadline.
        await using var server = FakeQmpServer.Start(FakeQmpServer.NewPath(), async c =>
        {
            await c.HandshakeAsync();
            await c.ExpectNoMoreAsync();
        });
        await using var first = await ConnectAsync(server.Path);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));

        await Assert.ThrowsAnyAsync<Exception>(() =>
            QmpMonitor.ConnectAsync(server.Path, "vm1", CommandTimeout, TimeProvider.System, NullLogger.Instance, cts.Token));
        Assert.True(cts.IsCancellationRequested);
    }
}
