using System.Diagnostics;
using System.Globalization;

namespace Virtd.Soak;

/// <summary>One look at the daemon process from /proc: resident memory, threads, open descriptors, CPU time used so far.</summary>
internal sealed record Sample(double Seconds, long RssKiB, int Threads, int Fds, double CpuSeconds, string FdKinds)
{
    public double RssMiB => RssKiB / 1024.0;
}

/// <summary>Samples the daemon every second from /proc/&lt;pid&gt;/status, /proc/&lt;pid&gt;/fd and /proc/&lt;pid&gt;/stat.</summary>
internal sealed class Sampler(int pid, Stopwatch clock)
{
    /// <summary>USER_HZ: the unit of utime and stime in /proc/pid/stat (100 on every Linux this runs on).</summary>
    private const double ClockTicks = 100;

    private readonly List<Sample> _samples = [];

    public IReadOnlyList<Sample> Samples
    {
        get
        {
            lock (_samples) return [.. _samples];
        }
    }

    public async Task RunAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            do
            {
                if (Take() is { } s)
                {
                    lock (_samples) _samples.Add(s);
                }
            } while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>A sample now, or null when the process is gone.</summary>
    public Sample? Take()
    {
        try
        {
            long rss = 0;
            var threads = 0;
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = long.Parse(Field(line), CultureInfo.InvariantCulture);
                else if (line.StartsWith("Threads:", StringComparison.Ordinal)) threads = int.Parse(Field(line), CultureInfo.InvariantCulture);
            }
            var kinds = new SortedDictionary<string, int>(StringComparer.Ordinal);
            var fds = 0;
            foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
            {
                fds++;
                var target = LinkTarget(fd);
                var kind = target.StartsWith('/') ? "file" : target.Split(':')[0];
                kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
            }
            return new Sample(clock.Elapsed.TotalSeconds, rss, threads, fds, CpuSeconds(), string.Join(" ", kinds.Select(k => $"{k.Key} {k.Value}")));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>User plus system CPU time of the process (fields 14 and 15 of /proc/pid/stat, after the command name).</summary>
    public double CpuSeconds()
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / ClockTicks;
    }

    /// <summary>What a /proc/pid/fd entry points at ("socket:[123]", "pipe:[4]", "anon_inode:[pidfd]", a path), or "gone".</summary>
    private static string LinkTarget(string fd)
    {
        try
        {
            return new FileInfo(fd).LinkTarget ?? "?";
        }
        catch (IOException)
        {
            return "gone";
        }
    }

    private static string Field(string line) => line.Split(':', 2)[1].Trim().Split(' ')[0];
}
