using System.Text.Json;

namespace Virtd.Testing;

/// <summary>
/// A domain whose job gate is held for as long as a test needs: it boots for ten minutes, so its
/// start job runs until it is cancelled (by a cancel request, a destroy, or the daemon stopping,
/// which keeps disposing the app quick).
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

    /// <summary>Defines <paramref name="name"/> with a ten-minute boot and returns its start job once it runs (and holds the gate).</summary>
    public static async Task<JsonElement> StartHungAsync(this HttpClient http, string name)
    {
        await http.DefineAsync(VirtdHttp.Definition(name, new { bootDelayMs = 600_000 }));
        var start = await http.ActAsync(name, "start");
        return await http.RunningJobAsync(start.Id());
    }
}
