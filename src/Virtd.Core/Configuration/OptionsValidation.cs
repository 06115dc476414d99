using Virtd.Core.Events;

namespace Virtd.Core.Configuration;

/// <summary>
/// Checks every option on start. Messages name the configuration key so that a bad
/// <c>--Jobs:Workers 0</c> or <c>VIRTD_Jobs__Workers=0</c> is easy to find.
/// </summary>
public static class OptionsValidation
{
    public static List<string> Validate(GuestsOptions g)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(Enum.IsDefined(g.OnDaemonStop), "Guests:OnDaemonStop", "must be keep or shutdown");
        Check(g.ParallelShutdown is >= 1 and <= 256, "Guests:ParallelShutdown", "must be between 1 and 256");
        Check(g.ShutdownTimeout >= TimeSpan.FromSeconds(1) && g.ShutdownTimeout <= TimeSpan.FromHours(1), "Guests:ShutdownTimeout", "must be between 00:00:01 and 01:00:00");
        Check(g.OverallTimeout >= TimeSpan.FromSeconds(1) && g.OverallTimeout <= TimeSpan.FromHours(2), "Guests:OverallTimeout", "must be between 00:00:01 and 02:00:00");
        return errors;
    }

    public static List<string> Validate(Observability.MetricsOptions m)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(m.StatsInterval >= TimeSpan.FromMilliseconds(10) && m.StatsInterval <= TimeSpan.FromHours(1), "Metrics:StatsInterval", "must be between 00:00:00.010 and 01:00:00");
        Check(m.DomainSeries is >= 16 and <= 1_000_000, "Metrics:DomainSeries", "must be between 16 and 1000000");
        Check(m.StatsTimeout >= TimeSpan.FromMilliseconds(10) && m.StatsTimeout <= TimeSpan.FromMinutes(5), "Metrics:StatsTimeout", "must be between 00:00:00.010 and 00:05:00");
        return errors;
    }

    public static List<string> Validate(VirtdOptions o)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(!string.IsNullOrWhiteSpace(o.StateDirectory) && Path.IsPathRooted(o.StateDirectory), "StateDirectory", "must be an absolute path");
        Check(!string.IsNullOrWhiteSpace(o.RunDirectory) && Path.IsPathRooted(o.RunDirectory), "RunDirectory", "must be an absolute path");
        Check(o.RunDirectory is null || o.RunDirectory.Length <= 64, "RunDirectory", "must be at most 64 characters (monitor socket paths are limited to 108 bytes)");
        Check(o.ShutdownTimeout > TimeSpan.Zero && o.ShutdownTimeout <= TimeSpan.FromHours(1), "ShutdownTimeout", "must be between 00:00:00.001 and 01:00:00");
        Check(o.IdleTimeout == TimeSpan.Zero || (o.IdleTimeout >= TimeSpan.FromSeconds(1) && o.IdleTimeout <= TimeSpan.FromDays(7)),
            "IdleTimeout", "must be 00:00:00 (off) or between 00:00:01 and 7.00:00:00");
        return errors;
    }

    public static List<string> Validate(StorageOptions s)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        foreach (var (name, path) in s.Pools)
        {
            Check(Storage.PoolNames.IsValid(name), $"Storage:Pools:{name}", $"a pool's name must match {Storage.PoolNames.Pattern}");
            Check(!string.IsNullOrWhiteSpace(path) && Path.IsPathRooted(path) && !path.Contains('\0'), $"Storage:Pools:{name}", "must be an absolute path");
        }
        Check(s.MaxUploadBytes is >= 1 and <= 1L << 50, "Storage:MaxUploadBytes", "must be between 1 and 1125899906842624 (1 PiB)");
        return errors;
    }

    public static List<string> Validate(JobsOptions j)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(j.Workers is >= 1 and <= 1024, "Jobs:Workers", "must be between 1 and 1024");
        Check(j.PriorityWorkers is >= 1 and <= 64, "Jobs:PriorityWorkers", "must be between 1 and 64");
        Check(j.QueueLimit is >= 1 and <= 1_000_000, "Jobs:QueueLimit", "must be between 1 and 1000000");
        Check(j.PerDomainQueueLimit is >= 1 and <= 100_000, "Jobs:PerDomainQueueLimit", "must be between 1 and 100000");
        Check(j.WaitTimeout > TimeSpan.Zero && j.WaitTimeout <= TimeSpan.FromHours(1), "Jobs:WaitTimeout", "must be between 00:00:00.001 and 01:00:00");
        Check(j.Retention > TimeSpan.Zero && j.Retention <= TimeSpan.FromDays(7), "Jobs:Retention", "must be between 00:00:00.001 and 7.00:00:00");
        Check(j.RetentionCount is >= 1 and <= 10_000_000, "Jobs:RetentionCount", "must be between 1 and 10000000");
        Check(j.IdempotencyWindow >= TimeSpan.FromSeconds(1) && j.IdempotencyWindow <= TimeSpan.FromDays(30), "Jobs:IdempotencyWindow", "must be between 00:00:01 and 30.00:00:00");
        Check(j.IdempotencyKeys is >= 1 and <= 10_000_000, "Jobs:IdempotencyKeys", "must be between 1 and 10000000");
        return errors;
    }

    public static List<string> Validate(SimulatedOptions sim)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(sim.MonitorTimeout > TimeSpan.Zero && sim.MonitorTimeout <= TimeSpan.FromHours(1), "Simulated:MonitorTimeout", "must be between 00:00:00.001 and 01:00:00");
        return errors;
    }

    public static List<string> Validate(EventsOptions ev)
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        Check(ev.ReplayBuffer is >= 1 and <= 10_000_000, "Events:ReplayBuffer", "must be between 1 and 10000000");
        Check(ev.SubscriberQueue is >= 1 and <= 10_000_000, "Events:SubscriberQueue", "must be between 1 and 10000000");
        Check(ev.HeartbeatSeconds is >= 1 and <= 3600, "Events:HeartbeatSeconds", "must be between 1 and 3600");
        return errors;
    }
}
