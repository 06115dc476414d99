using System.Text;
using Virtd.Core.Consoles;

namespace Virtd.Core.Tests.Consoles;

public class ConsoleHubTests
{
    private static ConsoleHub Hub(List<string>? typed = null, int queue = ConsoleHub.ViewerQueueBytes) =>
        new((input, _) => { typed?.Add(Encoding.UTF8.GetString(input.Span)); return ValueTask.CompletedTask; }, queue);

    private static async Task<string> DrainAsync(ConsoleViewer v)
    {
        var all = new List<byte[]>();
        v.TryReadMore(all, int.MaxValue);
        await Task.Yield();
        return Encoding.UTF8.GetString(all.SelectMany(c => c).ToArray());
    }

    [Fact]
    public async Task ANewViewer_GetsTheLast64KiB_ThenWhatFollows()
    {
        var hub = Hub();
        hub.Publish(Encoding.ASCII.GetBytes(new string('a', 100_000)));
        hub.Publish("tail"u8);
        using var v = hub.Attach();
        var history = await DrainAsync(v);
        Assert.Equal(ConsoleHub.HistoryBytes, history.Length);
        Assert.EndsWith("atail", history);
        hub.Publish("next"u8);
        Assert.Equal("next", Encoding.ASCII.GetString((await v.ReadAsync(default))!));
    }

    [Fact]
    public async Task EveryViewer_SeesTheSameOutput_AndAnyViewersInputReachesTheGuest()
    {
        var typed = new List<string>();
        var hub = Hub(typed);
        using var a = hub.Attach();
        using var b = hub.Attach();
        hub.Publish("hello"u8);
        Assert.Equal("hello", await DrainAsync(a));
        Assert.Equal("hello", await DrainAsync(b));
        await hub.WriteAsync("ls\r"u8.ToArray(), default);
        Assert.Equal(["ls\r"], typed);
    }

    [Fact]
    public async Task AViewerThatNeverReads_IsDropped_OnceItIsTooFarBehind_AndTheOthersGoOn()
    {
        var hub = Hub(queue: 64 * 1024);
        using var stuck = hub.Attach();
        using var reading = hub.Attach();
        var chunk = new byte[4096];
        for (var i = 0; i < 100; i++)
        {
            hub.Publish(chunk);
            await DrainAsync(reading);
        }
        Assert.True(stuck.Dropped.IsCancellationRequested);
        Assert.Contains("behind", stuck.EndReason);
        Assert.False(reading.Dropped.IsCancellationRequested);
        Assert.Equal(1, hub.Viewers);
    }

    [Fact]
    public void AFlood_WithAViewerThatNeverReads_KeepsMemoryBounded()
    {
        var hub = Hub();
        using var stuck = hub.Attach();
        var before = GC.GetTotalMemory(forceFullCollection: true);
        var chunk = new byte[16 * 1024];
        for (var i = 0; i < 12_800; i++) hub.Publish(chunk); // 200 MiB
        var after = GC.GetTotalMemory(forceFullCollection: true);
        Assert.True(after - before < 4L * 1024 * 1024, $"grew by {(after - before) / 1048576.0:0.0} MiB");
        Assert.True(stuck.Queued <= ConsoleHub.ViewerQueueBytes);
    }

    [Fact]
    public async Task WhenTheVmStops_EveryViewersStreamEnds_AfterWhatItHadQueued()
    {
        var hub = Hub();
        using var v = hub.Attach();
        hub.Publish("last words"u8);
        hub.End("the domain stopped");
        Assert.Equal("last words", Encoding.ASCII.GetString((await v.ReadAsync(default))!));
        Assert.Null(await v.ReadAsync(default));
        Assert.Equal("the domain stopped", v.EndReason);
        using var late = hub.Attach();
        Assert.Equal("last words", Encoding.ASCII.GetString((await late.ReadAsync(default))!));
        Assert.Null(await late.ReadAsync(default));
    }

    [Fact]
    public async Task TheHistory_GrowsFromSmall_AndKeepsItsOrderAcrossTheWrap()
    {
        var hub = Hub();
        var expected = new StringBuilder();
        for (var i = 0; i < 5000; i++)
        {
            var line = $"line {i}\n";
            expected.Append(line);
            hub.Publish(Encoding.ASCII.GetBytes(line));
            if (i is 10 or 200 or 4999)
            {
                using var v = hub.Attach();
                var all = expected.ToString();
                Assert.Equal(all[Math.Max(0, all.Length - ConsoleHub.HistoryBytes)..], await DrainAsync(v));
            }
        }
    }
}
