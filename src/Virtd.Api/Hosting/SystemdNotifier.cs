using System.Runtime.InteropServices;
using Microsoft.Extensions.Hosting.Systemd;

namespace Virtd.Api.Hosting;

public static class SystemdIntegration
{
    /// <summary>
    /// Microsoft.Extensions.Hosting.Systemd, when systemd started the daemon (its parent is named <c>systemd</c>, or it is
    /// PID 1): <c>READY=1</c> on <c>$NOTIFY_SOCKET</c> once the host has started (the daemon is ready and its listeners
    /// are bound), <c>STOPPING=1</c> when it begins to stop, SIGTERM as the stop signal, and log lines in the journal's
    /// format with their syslog priority (<c>journalctl -p warning</c>). Otherwise nothing changes.
    /// </summary>
    public static IHostApplicationBuilder AddSystemd(this IHostApplicationBuilder builder)
    {
        builder.Services.AddSystemd();
        // The library's lifetime stops on SIGTERM only; SIGINT (systemctl kill -s INT, a Ctrl-C on a console) stops too.
        if (SystemdHelpers.IsSystemdService()) builder.Services.AddHostedService<SigintStops>();
        return builder;
    }

    /// <summary>SIGINT stops the host as SIGTERM does (what the console lifetime does, which systemd's replaces).</summary>
    private sealed class SigintStops(IHostApplicationLifetime lifetime) : IHostedService, IDisposable
    {
        private PosixSignalRegistration? _registration;

        public Task StartAsync(CancellationToken cancellationToken)
        {
            _registration = PosixSignalRegistration.Create(PosixSignal.SIGINT, context =>
            {
                context.Cancel = true;
                lifetime.StopApplication();
            });
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public void Dispose() => _registration?.Dispose();
    }
}
