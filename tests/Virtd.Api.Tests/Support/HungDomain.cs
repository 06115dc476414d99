using System.Text.Json;

namespace Virtd.Api.Tests.Support;

/// <summary>
/// A domain whose job gate is held for as long as a test needs: its monitor hangs, so a start
/// blocks in the launch's first monitor command until <c>Simulated:MonitorTimeout</c> (long here)
/// or until it is cancelled. Stopping the daemon cancels it, so disposing the app stays quick.
/// </summary>
public static class HungDomain
{
    public static VirtdApplication App(string waitTimeout = "00:00:30", IDictionary<string, string?>? more = null)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Jobs:WaitTimeout"] = waitTimeout,
            ["Simulated:MonitorTimeout"] = "00:02:00",
        };
        if (more is not null) foreach (var (k, v) in more) settings[k] = v;
        return new VirtdApplication(settings: settings);
    }

    /// <summary>Defines <paramref name="name"/> with a hung monitor and returns its start job once it runs (and holds the gate).</summary>
    public static async Task<JsonElement> StartHungAsync(this HttpClient http, string name)
    {
        await http.DefineAsync(VirtdHttp.Definition(name, new { hangMonitor = true }));
        var start = await http.ActAsync(name, "start");
        return await http.RunningJobAsync(start.Id());
    }
}
