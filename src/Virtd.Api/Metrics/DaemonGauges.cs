using System.Diagnostics.Metrics;
using Virtd.Api.Errors;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Observability;

namespace Virtd.Api.Metrics;

/// <summary>
/// The daemon's levels, read when a scrape collects: queue depth, busy workers, event subscribers, domains by driver and
/// state, and each VM's figures as the <see cref="DomainStatsCollector"/> last read them. Every callback reads memory
/// only (snapshots, counters, the collector's readings): a scrape never waits on a VM, a gate or a lock held for long.
/// </summary>
public sealed class DaemonGauges
{
    private static readonly DomainState[] States = Enum.GetValues<DomainState>();
    private static readonly string[] StateNames = States.Select(EnumText.Name).ToArray();

    public DaemonGauges(VirtdMetrics metrics, DomainRegistry registry, JobScheduler scheduler, EventBus bus, DriverCatalog drivers,
        DomainStatsCollector collector)
    {
        var m = metrics.Meter;
        m.CreateObservableGauge("virtd.jobs.queued", () => scheduler.QueuedCount, "{job}", "Jobs waiting: behind their domain's gate or for a worker");
        m.CreateObservableGauge("virtd.jobs.domain_queue.max", () => registry.List().Select(d => d.Gate.QueueLength).DefaultIfEmpty().Max(), "{job}",
            "The longest queue of jobs waiting behind one domain's gate");
        m.CreateObservableGauge("virtd.jobs.running", () => scheduler.RunningCount, "{job}", "Jobs running (on a worker, or waiting for their VM without one)");
        m.CreateObservableGauge("virtd.workers.busy", () => new[]
        {
            new Measurement<int>(scheduler.BusyNormalWorkers, new KeyValuePair<string, object?>("lane", "normal")),
            new Measurement<int>(scheduler.BusyPriorityWorkers, new KeyValuePair<string, object?>("lane", "priority")),
        }, "{worker}", "Workers running a job, by lane (normal; priority runs only destroy)");
        m.CreateObservableGauge("virtd.workers.limit", () => new[]
        {
            new Measurement<int>(scheduler.Options.Workers, new KeyValuePair<string, object?>("lane", "normal")),
            new Measurement<int>(scheduler.Options.PriorityWorkers, new KeyValuePair<string, object?>("lane", "priority")),
        }, "{worker}", "Workers configured, by lane (Jobs:Workers, Jobs:PriorityWorkers)");
        m.CreateObservableGauge("virtd.events.subscribers", () => bus.SubscriberCount, "{stream}", "Open event streams (GET /api/v1/events)");
        m.CreateObservableGauge("virtd.domains", () => DomainsByDriverAndState(registry, drivers), "{domain}", "Domains defined, by driver and state");

        m.CreateObservableGauge("virtd.domain.state", () => DomainStates(registry), null,
            "1 for the state each domain is in, 0 for the others, by domain, uuid and state");
        m.CreateObservableGauge("virtd.domain.stats.stale", () => PerVm<int>(collector, r => r.Stale ? 1 : 0), null,
            "1 when a running VM's last figure read failed or has not answered (a hung QEMU): its figures are the last ones read");
        m.CreateObservableCounter("virtd.domain.vcpu.time", () => PerVm<double>(collector, r => r.Stats?.VcpuSeconds), "s",
            "CPU time used by the VM's virtual CPUs (its QEMU's vCPU threads, from /proc/<pid>/task/*/stat)");
        m.CreateObservableGauge("virtd.domain.memory.rss", () => PerVm<long>(collector, r => r.Stats?.RssBytes), "By",
            "Resident memory of the VM's QEMU process");
        m.CreateObservableGauge("virtd.domain.balloon.actual", () => PerVm<long>(collector, r => r.Stats?.BalloonActualBytes), "By",
            "Memory the guest has now (query-balloon's actual; without a balloon device, its defined memory)");
        m.CreateObservableCounter("virtd.domain.block.read", () => PerDisk(collector, d => d.ReadBytes), "By", "Bytes read by the guest, per disk (query-blockstats)");
        m.CreateObservableCounter("virtd.domain.block.write", () => PerDisk(collector, d => d.WriteBytes), "By", "Bytes written by the guest, per disk");
        m.CreateObservableCounter("virtd.domain.block.read.operations", () => PerDisk(collector, d => d.ReadOperations), "{operation}",
            "Read operations of the guest, per disk");
        m.CreateObservableCounter("virtd.domain.block.write.operations", () => PerDisk(collector, d => d.WriteOperations), "{operation}",
            "Write operations of the guest, per disk");
        m.CreateObservableCounter("virtd.domain.block.read.time", () => PerDisk(collector, d => d.ReadSeconds), "s",
            "Time spent on read operations, per disk");
        m.CreateObservableCounter("virtd.domain.block.write.time", () => PerDisk(collector, d => d.WriteSeconds), "s",
            "Time spent on write operations, per disk");
    }

    private static IEnumerable<Measurement<int>> DomainsByDriverAndState(DomainRegistry registry, DriverCatalog drivers)
    {
        var kinds = drivers.All.Select(d => d.Kind).Distinct().ToArray();
        var counts = new int[Enum.GetValues<DriverKind>().Length, States.Length];
        foreach (var d in registry.List()) counts[(int)d.Driver, (int)d.Runtime.State]++;
        foreach (var kind in kinds)
        {
            var driver = new KeyValuePair<string, object?>("driver", EnumText.Name(kind));
            for (var s = 0; s < States.Length; s++)
                yield return new Measurement<int>(counts[(int)kind, s], driver, new KeyValuePair<string, object?>("state", StateNames[s]));
        }
    }

    private static IEnumerable<Measurement<int>> DomainStates(DomainRegistry registry)
    {
        foreach (var d in registry.List())
        {
            var state = d.Runtime.State;
            var name = new KeyValuePair<string, object?>("domain", d.Name);
            var uuid = new KeyValuePair<string, object?>("uuid", d.Uuid.ToString());
            for (var s = 0; s < States.Length; s++)
                yield return new Measurement<int>(States[s] == state ? 1 : 0, name, uuid, new KeyValuePair<string, object?>("state", StateNames[s]));
        }
    }

    private static IEnumerable<Measurement<T>> PerVm<T>(DomainStatsCollector collector, Func<DomainStatsReading, T?> value) where T : struct
    {
        foreach (var r in collector.Readings)
        {
            if (value(r) is { } v)
                yield return new Measurement<T>(v, new KeyValuePair<string, object?>("domain", r.Name), new KeyValuePair<string, object?>("uuid", r.Uuid.ToString()));
        }
    }

    private static IEnumerable<Measurement<T>> PerDisk<T>(DomainStatsCollector collector, Func<DiskStats, T> value) where T : struct
    {
        foreach (var r in collector.Readings)
        {
            if (r.Stats is not { } stats) continue;
            foreach (var disk in stats.Disks)
                yield return new Measurement<T>(value(disk), new KeyValuePair<string, object?>("domain", r.Name),
                    new KeyValuePair<string, object?>("uuid", r.Uuid.ToString()), new KeyValuePair<string, object?>("disk", disk.Disk));
        }
    }
}
