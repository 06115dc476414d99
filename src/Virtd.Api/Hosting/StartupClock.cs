using System.Diagnostics;

namespace Virtd.Api.Hosting;

/// <summary>
/// Where start-up's time goes, from <c>Main</c> on: marks taken as the daemon is put together (configured, built, its
/// services started), logged with the ready line (<c>virtd ready in … (from main: configured 8.0 ms, built 29.5 ms, …)</c>).
/// </summary>
public static class StartupClock
{
    private static readonly long Origin = Stopwatch.GetTimestamp();
    private static readonly List<(string Name, double Ms)> Marks = [];

    /// <summary>Milliseconds since <c>Main</c> began.</summary>
    public static double Elapsed => Stopwatch.GetElapsedTime(Origin).TotalMilliseconds;

    /// <summary>Marks <paramref name="name"/> now, the first time only (a test process starts many hosts).</summary>
    public static void Mark(string name)
    {
        lock (Marks)
        {
            if (!Marks.Exists(m => m.Name == name)) Marks.Add((name, Elapsed));
        }
    }

    /// <summary>The marks so far, as <c>configured 12.1 ms, built 40.3 ms, …</c>.</summary>
    public static string Summary()
    {
        lock (Marks) return string.Join(", ", Marks.Select(m => $"{m.Name} {m.Ms:0.0} ms"));
    }
}
