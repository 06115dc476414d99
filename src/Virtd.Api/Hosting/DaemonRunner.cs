namespace Virtd.Api.Hosting;

public static class DaemonRunner
{
    /// <summary>Runs the daemon; a configuration error prints one line naming the key and exits 2, a port in use one line and exits 1.</summary>
    public static async Task<int> RunAsync(WebApplication app)
    {
        try
        {
            // Checked before the host starts, so a bad value gives one clear line rather than a host failure trace.
            VirtdConfiguration.Resolve(app.Services);
            StartupClock.Mark("checked");
            await app.RunAsync().ConfigureAwait(false);
            return Environment.ExitCode;
        }
        catch (Exception e) when (Find<ConfigurationException>(e) is { } config)
        {
            // Thrown directly, or from inside the host's start (a listener that cannot be used).
            await Console.Error.WriteLineAsync($"virtd: {config.Message}").ConfigureAwait(false);
            return 2;
        }
        catch (IOException e) when (Find<Microsoft.AspNetCore.Connections.AddressInUseException>(e) is not null)
        {
            // Another process has the port (often the previous daemon, still stopping): one line, and a code a
            // service manager may retry on.
            await Console.Error.WriteLineAsync($"virtd: {e.Message} (another process listens there)").ConfigureAwait(false);
            return 1;
        }
    }

    private static T? Find<T>(Exception? e) where T : Exception
    {
        for (; e is not null; e = e.InnerException)
        {
            if (e is T found) return found;
            if (e is AggregateException { InnerExceptions.Count: 1 } one) e = one;
        }
        return null;
    }
}
