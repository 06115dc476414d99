using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;

namespace Virtd.Api.Hosting;

/// <summary>
/// sd_notify(3) without libsystemd: each message is one datagram to the Unix socket named by
/// <c>$NOTIFY_SOCKET</c> (a path, or an abstract name written with a leading <c>@</c>). Without the
/// variable it does nothing. It never throws: a failed send is logged once as a warning.
/// </summary>
public sealed class SystemdNotifier(string? socket, ILogger<SystemdNotifier> log)
{
    private int _warned;

    public static SystemdNotifier FromEnvironment(ILogger<SystemdNotifier> log) =>
        new(Environment.GetEnvironmentVariable("NOTIFY_SOCKET"), log);

    public bool Enabled => !string.IsNullOrEmpty(socket);

    /// <summary>Sends newline-separated assignments such as <c>READY=1\nSTATUS=ready</c>.</summary>
    public void Notify(string state)
    {
        if (!Enabled) return;
        try
        {
            using var s = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            // The manager reads at once; the bound only keeps a stuck one from holding the caller.
            s.SendTimeout = 1000;
            s.SendTo(Encoding.UTF8.GetBytes(state), EndPoint(socket!));
        }
        catch (Exception e) when (e is SocketException or ArgumentException or ObjectDisposedException)
        {
            if (Interlocked.Exchange(ref _warned, 1) == 0)
                log.LogWarning("cannot notify the service manager at NOTIFY_SOCKET={Socket}: {Error}", socket, e.Message);
        }
    }

    /// <summary>The socket's address: <c>@name</c> is the abstract name <c>\0name</c>.</summary>
    public static UnixDomainSocketEndPoint EndPoint(string socket) =>
        new(socket.StartsWith('@') ? "\0" + socket[1..] : socket);
}

/// <summary>Tells systemd (<c>Type=notify</c>) when the daemon is ready and when it begins to stop.</summary>
public sealed class SystemdNotification(SystemdNotifier notifier, DaemonStatus status, IServer server) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (notifier.Enabled) status.Changed += OnChanged;
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private void OnChanged(DaemonState state)
    {
        if (state == DaemonState.Ready)
        {
            var urls = server.Features.Get<IServerAddressesFeature>()?.Addresses;
            notifier.Notify($"READY=1\nSTATUS=ready on {string.Join(' ', urls ?? [])}");
        }
        else if (state == DaemonState.Stopping)
        {
            notifier.Notify("STOPPING=1\nSTATUS=stopping");
        }
    }
}

public static class SystemdIntegration
{
    /// <summary>
    /// What Microsoft.Extensions.Hosting.Systemd would give (it is not on this mirror): readiness and stopping
    /// notifications when <c>$NOTIFY_SOCKET</c> is set, and, when stderr is the journal, one log line per
    /// entry with its syslog priority (<c>journalctl -p warning</c>).
    /// </summary>
    public static IHostApplicationBuilder AddSystemd(this IHostApplicationBuilder builder)
    {
        builder.Services.AddSingleton(sp => SystemdNotifier.FromEnvironment(sp.GetRequiredService<ILogger<SystemdNotifier>>()));
        builder.Services.AddHostedService<SystemdNotification>();
        if (IsJournal(Environment.GetEnvironmentVariable("JOURNAL_STREAM"), LinkTarget("/proc/self/fd/2")))
            builder.Logging.AddSystemdConsole();
        return builder;
    }

    /// <summary>
    /// systemd sets <c>JOURNAL_STREAM=device:inode</c> for a stdout/stderr connected to the journal; a child
    /// may inherit the variable with other streams, so the inode must be stderr's own (<c>socket:[inode]</c>).
    /// </summary>
    public static bool IsJournal(string? journalStream, string? stderr) =>
        journalStream?.Split(':') is [_, var inode] && stderr == $"socket:[{inode}]";

    private static string? LinkTarget(string path)
    {
        try { return new FileInfo(path).LinkTarget; }
        catch (IOException) { return null; }
    }
}
