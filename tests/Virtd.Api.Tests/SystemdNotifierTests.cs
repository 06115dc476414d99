using Microsoft.Extensions.Logging;
using Virtd.Api.Hosting;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>sd_notify over a real datagram socket that the test binds, as systemd does.</summary>
public sealed class SystemdNotifierTests
{
    [Fact]
    public async Task Notify_ToASocketPath_DeliversTheMessageAsOneDatagram()
    {
        var path = Path.Combine(TestDirectories.Create("virtd-notify-"), "notify.sock");
        using var manager = NotifySocket.Bind(path);
        var notifier = new SystemdNotifier(path, new ListLogger());

        notifier.Notify("READY=1\nSTATUS=ready");

        Assert.Equal("READY=1\nSTATUS=ready", await manager.ReceiveAsync());
    }

    [Fact]
    public async Task Notify_ToAnAbstractName_DeliversTheMessage()
    {
        var name = $"@virtd-test-{Guid.NewGuid():N}";
        using var manager = NotifySocket.Bind(name);
        var notifier = new SystemdNotifier(name, new ListLogger());

        notifier.Notify("STOPPING=1");

        Assert.Equal("STOPPING=1", await manager.ReceiveAsync());
    }

    [Fact]
    public void Notify_WhenNoManagerListens_DoesNotThrowAndWarnsOnce()
    {
        var log = new ListLogger();
        var notifier = new SystemdNotifier(Path.Combine(TestDirectories.Create("virtd-notify-"), "nobody.sock"), log);

        notifier.Notify("READY=1");
        notifier.Notify("STOPPING=1");

        var warning = Assert.Single(log.Entries);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains("NOTIFY_SOCKET", warning.Message);
    }

    [Fact]
    public void Notify_WithoutNotifySocket_DoesNothing()
    {
        var log = new ListLogger();
        var notifier = new SystemdNotifier(null, log);

        notifier.Notify("READY=1");

        Assert.False(notifier.Enabled);
        Assert.Empty(log.Entries);
    }

    [Theory]
    [InlineData("8:1234", "socket:[1234]", true)]
    [InlineData("8:1234", "socket:[999]", false)] // inherited from a parent whose stderr was the journal
    [InlineData("8:1234", "/dev/pts/0", false)]
    [InlineData(null, "socket:[1234]", false)]
    [InlineData("garbage", "socket:[1234]", false)]
    public void IsJournal_OnlyWhenStderrIsTheStreamJournalStreamNames(string? journalStream, string stderr, bool expected) =>
        Assert.Equal(expected, SystemdIntegration.IsJournal(journalStream, stderr));

    private sealed class ListLogger : ILogger<SystemdNotifier>
    {
        public List<(LogLevel Level, string Message)> Entries { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Entries.Add((logLevel, formatter(state, exception)));
    }
}
