namespace Virtd.Api.Hosting;

public static class DaemonRunner
{
    /// <summary>Runs the daemon; a configuration error prints one line naming the key and exits 2.</summary>
    public static async Task<int> RunAsync(WebApplication app)
    {
        try
        {
            // Checked before the host starts, so a bad value gives one clear line rather than a host failure trace.
            VirtdConfiguration.Resolve(app.Services);
            await app.RunAsync().ConfigureAwait(false);
            return Environment.ExitCode;
        }
        catch (ConfigurationException e)
        {
            await Console.Error.WriteLineAsync($"virtd: {e.Message}").ConfigureAwait(false);
            return 2;
        }
    }
}
