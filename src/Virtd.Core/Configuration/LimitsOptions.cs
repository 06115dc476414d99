using System.Globalization;
using Virtd.Core.Domains;
using Virtd.Core.Errors;

namespace Virtd.Core.Configuration;

/// <summary>Configuration section <c>Limits</c>: how much any caller may ask of the daemon and of the host.</summary>
public sealed class LimitsOptions
{
    /// <summary>Domains defined at most; a define beyond gets 409 <c>quota-exceeded</c>.</summary>
    public int Domains { get; set; } = 4096;

    /// <summary>Memory of active domains, as a multiple of the host's RAM, that a start may not exceed (409 <c>insufficient-resources</c>).</summary>
    public double MemoryOvercommit { get; set; } = 1.5;

    /// <summary>Open event streams in all (429 <c>too-many-streams</c> beyond).</summary>
    public int EventStreams { get; set; } = 1000;

    /// <summary>Open event streams of one caller (token, session's token, or Unix peer uid).</summary>
    public int EventStreamsPerIdentity { get; set; } = 100;

    /// <summary>Requests per second per caller identity (or client address when anonymous); 0, the default, is no limit.</summary>
    public int RequestsPerSecond { get; set; }

    /// <summary>What a list answers when the request names no <c>?limit=</c>; a longer list gets a <c>Link: rel="next"</c>.</summary>
    public int ListDefault { get; set; } = 10_000;

    /// <summary>Kestrel's MaxConcurrentConnections: TCP and Unix socket connections at once.</summary>
    public int Connections { get; set; } = 4096;

    public List<string> Validate()
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(Domains is >= 1 and <= 1_000_000, "Limits:Domains", "must be between 1 and 1000000");
        Check(MemoryOvercommit is >= 0.1 and <= 100, "Limits:MemoryOvercommit", "must be between 0.1 and 100");
        Check(EventStreams is >= 1 and <= 100_000, "Limits:EventStreams", "must be between 1 and 100000");
        Check(EventStreamsPerIdentity is >= 1 and <= 100_000, "Limits:EventStreamsPerIdentity", "must be between 1 and 100000");
        Check(RequestsPerSecond is >= 0 and <= 10_000_000, "Limits:RequestsPerSecond", "must be between 0 (no limit) and 10000000");
        Check(ListDefault is >= 1 and <= 1_000_000, "Limits:ListDefault", "must be between 1 and 1000000");
        Check(Connections is >= 16 and <= 1_000_000, "Limits:Connections", "must be between 16 and 1000000");
        return errors;
    }
}

/// <summary>What the host can take: the domain quota and the memory that active domains may use.</summary>
public sealed class ResourceLimits(LimitsOptions options, DomainRegistry registry)
{
    /// <summary>The host's RAM in MiB (<c>MemTotal</c>), read once.</summary>
    public static long HostMemoryMiB { get; } = ReadMemTotalMiB();

    public LimitsOptions Options => options;

    /// <summary>The memory active domains may use together, in MiB.</summary>
    public long MemoryBudgetMiB => (long)(HostMemoryMiB * options.MemoryOvercommit);

    /// <summary>Memory of the domains that run (or are paused), by what they run.</summary>
    public long ActiveMemoryMiB()
    {
        long sum = 0;
        foreach (var d in registry.List())
        {
            var v = d.View;
            if (v.Instance is not null) sum += (v.Live ?? v.Definition).MemoryMiB;
        }
        return sum;
    }

    /// <summary>Throws 409 <c>insufficient-resources</c> when starting <paramref name="d"/> would take active domains past the budget.</summary>
    public void CheckStart(DomainObject d)
    {
        var want = d.Definition.MemoryMiB;
        var active = ActiveMemoryMiB();
        if (active + want <= MemoryBudgetMiB) return;
        throw new VirtdException(ErrorCodes.InsufficientResources, 409, "Insufficient resources",
            $"starting '{d.Name}' needs {want} MiB; active domains already use {active} MiB of the {MemoryBudgetMiB} MiB allowed " +
            $"({HostMemoryMiB} MiB of RAM × Limits:MemoryOvercommit {options.MemoryOvercommit.ToString(CultureInfo.InvariantCulture)})");
    }

    public VirtdException QuotaExceeded() =>
        new(ErrorCodes.QuotaExceeded, 409, "Quota exceeded", $"{options.Domains} domains are defined, the most Limits:Domains allows; undefine one first");

    private static long ReadMemTotalMiB()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (!line.StartsWith("MemTotal:", StringComparison.Ordinal)) continue;
                var kib = long.Parse(line["MemTotal:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
                return kib / 1024;
            }
        }
        catch (IOException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024 * 1024);
    }
}
