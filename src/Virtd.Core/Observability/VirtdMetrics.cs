using System.Diagnostics;
using System.Diagnostics.Metrics;
using Virtd.Core.Jobs;

namespace Virtd.Core.Observability;

/// <summary>
/// The daemon's own instruments, all in one <see cref="Meter"/> named <c>Virtd</c> (one per daemon: made by the host's
/// <see cref="IMeterFactory"/>, so it ends with the host). What changes at an instant is counted here by the component
/// that sees it (the scheduler, the event bus, a QMP monitor); what is a level (queue depth, domains by state, busy
/// workers, per-VM figures) is read at collection time by observable instruments (<c>DaemonGauges</c> in the API).
/// Names follow OpenTelemetry's conventions; the Prometheus exporter adds the unit and <c>_total</c>
/// (<c>virtd.jobs.finished</c> → <c>virtd_jobs_finished_total</c>). With nothing listening, each call costs a branch.
/// </summary>
public sealed class VirtdMetrics : IDisposable
{
    public const string MeterName = "Virtd";

    /// <summary>Instruments nobody listens to: for components built without a daemon (tests, tools).</summary>
    public static readonly VirtdMetrics None = new(null);

    private readonly bool _owned;

    public VirtdMetrics(IMeterFactory? factory)
    {
        _owned = factory is null;
        Meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        JobsAccepted = Meter.CreateCounter<long>("virtd.jobs.accepted", "{job}", "Jobs accepted (queued), by kind");
        JobsFinished = Meter.CreateCounter<long>("virtd.jobs.finished", "{job}", "Jobs finished, by kind and outcome (succeeded, failed, cancelled, superseded)");
        JobDuration = Meter.CreateHistogram<double>("virtd.job.duration", "s", "How long jobs ran, from start to finish, by kind",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] });
        GateWait = Meter.CreateHistogram<double>("virtd.job.gate_wait", "s", "How long jobs waited for their domain's job gate, by kind",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30] });
        EventResyncs = Meter.CreateCounter<long>("virtd.events.resyncs", "{resync}", "Event streams told to resync: a Last-Event-ID no longer replayable, or a client too slow");
        QmpCommands = Meter.CreateCounter<long>("virtd.qmp.commands", "{command}", "QMP commands sent to QEMU monitors, by command and outcome (ok, error, timeout, closed, cancelled)");
        QmpDuration = Meter.CreateHistogram<double>("virtd.qmp.command.duration", "s", "QMP command latency, from send to reply, by command",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 10] });
        MonitorTimeouts = Meter.CreateCounter<long>("virtd.qmp.timeouts", "{command}", "QMP commands that got no reply within their timeout (monitor-timeout)");
    }

    public Meter Meter { get; }
    public Counter<long> JobsAccepted { get; }
    public Counter<long> JobsFinished { get; }
    public Histogram<double> JobDuration { get; }
    public Histogram<double> GateWait { get; }
    public Counter<long> EventResyncs { get; }
    public Counter<long> QmpCommands { get; }
    public Histogram<double> QmpDuration { get; }
    public Counter<long> MonitorTimeouts { get; }

    public void JobAccepted(JobKind kind)
    {
        if (JobsAccepted.Enabled) JobsAccepted.Add(1, new KeyValuePair<string, object?>("kind", Text(kind)));
    }

    public void JobFinished(Job job, JobState outcome)
    {
        var kind = new KeyValuePair<string, object?>("kind", Text(job.Kind));
        if (JobsFinished.Enabled) JobsFinished.Add(1, kind, new KeyValuePair<string, object?>("outcome", Text(outcome)));
        if (JobDuration.Enabled && job.StartedAt is { } started && job.FinishedAt is { } finished)
            JobDuration.Record((finished - started).TotalSeconds, kind);
    }

    public void JobGateWait(JobKind kind, TimeSpan waited)
    {
        if (GateWait.Enabled) GateWait.Record(Math.Max(0, waited.TotalSeconds), new KeyValuePair<string, object?>("kind", Text(kind)));
    }

    public void QmpCommand(string command, string outcome, long startTimestamp)
    {
        var c = new KeyValuePair<string, object?>("command", command);
        if (QmpCommands.Enabled) QmpCommands.Add(1, c, new KeyValuePair<string, object?>("outcome", outcome));
        if (outcome == "timeout") MonitorTimeouts.Add(1, c);
        if (QmpDuration.Enabled && outcome is "ok" or "error") QmpDuration.Record(Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds, c);
    }

    private static readonly string[] Kinds = Enum.GetValues<JobKind>().Select(k => k.ToString().ToLowerInvariant()).ToArray();
    private static readonly string[] States = Enum.GetValues<JobState>().Select(k => k.ToString().ToLowerInvariant()).ToArray();

    public static string Text(JobKind kind) => Kinds[(int)kind];
    public static string Text(JobState state) => States[(int)state];

    public void Dispose()
    {
        if (_owned && this != None) Meter.Dispose();
    }
}

/// <summary>The daemon's trace source: request → job → QMP command. Without a listener (no OTLP endpoint) StartActivity returns null.</summary>
public static class VirtdTracing
{
    public const string SourceName = "Virtd";
    public static readonly ActivitySource Source = new(SourceName);
}
