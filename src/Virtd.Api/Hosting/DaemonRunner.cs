namespace Virtd.Api.Hosting;

public static class DaemonRunner
{
    /// <summary>Runs the daemon; a configuration error prints one line naming the key and exits 2.</summary>
    public static async Task<int> RunAsync(WebApplication app)
    {
        try
        {
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
