using Virtd.Api.Access;
using Virtd.Core.Configuration;
using Virtd.Core.Events;
using Virtd.Core.Observability;
using Virtd.Drivers.Qemu;

namespace Virtd.Api.Hosting;

/// <summary>A configuration value that cannot be used; the daemon exits with code 2 and this message.</summary>
public sealed class ConfigurationException(string message) : Exception(message);

/// <summary>All options, bound and checked together.</summary>
public sealed record VirtdConfiguration(VirtdOptions Virtd, StorageOptions Storage, JobsOptions Jobs, SimulatedOptions Simulated, EventsOptions Events, QemuOptions Qemu,
    GuestsOptions Guests, SecurityOptions Security, ListenerOptions Listen, LimitsOptions Limits, MetricsOptions Metrics)
{
    /// <summary>
    /// The whole of shutdown phase 2: <c>ShutdownTimeout</c>, plus <c>Guests:OverallTimeout</c> when guests are shut down with the daemon.
    /// </summary>
    public TimeSpan StopBound => Virtd.ShutdownTimeout + (Guests.OnDaemonStop == GuestStopPolicy.Shutdown ? Guests.OverallTimeout : TimeSpan.Zero);

    /// <summary>Binds every section; a value of the wrong type or out of range throws <see cref="ConfigurationException"/> naming the key.</summary>
    public static VirtdConfiguration Bind(IConfiguration configuration)
    {
        try
        {
            var virtd = configuration.Get<VirtdOptions>() ?? new VirtdOptions();
            var storage = new StorageOptions();
            configuration.GetSection("Storage").Bind(storage);
            storage.Pools.TryAdd(StorageOptions.DefaultPool, Path.Combine(virtd.StateDirectory, "images"));
            var jobs = new JobsOptions();
            configuration.GetSection("Jobs").Bind(jobs);
            var sim = new SimulatedOptions();
            configuration.GetSection("Simulated").Bind(sim);
            var events = new EventsOptions();
            configuration.GetSection("Events").Bind(events);
            var qemu = new QemuOptions();
            configuration.GetSection("Qemu").Bind(qemu);
            var errors = OptionsValidation.Validate(virtd, storage, jobs, sim, events);
            errors.AddRange(qemu.Validate());
            var guests = new GuestsOptions();
            configuration.GetSection("Guests").Bind(guests);
            errors.AddRange(OptionsValidation.Validate(guests));
            var security = new SecurityOptions();
            configuration.GetSection("Security").Bind(security);
            errors.AddRange(security.Validate());
            var limits = new LimitsOptions();
            configuration.GetSection("Limits").Bind(limits);
            errors.AddRange(limits.Validate());
            var metrics = new MetricsOptions();
            configuration.GetSection("Metrics").Bind(metrics);
            errors.AddRange(OptionsValidation.Validate(metrics));
            var listen = new ListenerOptions();
            configuration.GetSection("Listen").Bind(listen);
            if (!security.AllowPlainHttpOnNetwork && ListenAddresses.PlainHttpOnNetwork(configuration) is var (key, url))
                errors.Add($"{key}: {url} is plain HTTP on a network address, so tokens and session cookies would cross the network in clear text; " +
                           "use https:// (README: TLS), a loopback address or the Unix sockets, or set Security:AllowPlainHttpOnNetwork=true");
            if (errors.Count > 0) throw new ConfigurationException("invalid configuration: " + string.Join("; ", errors));
            return new VirtdConfiguration(virtd, storage, jobs, sim, events, qemu, guests, security, listen, limits, metrics);
        }
        catch (InvalidOperationException e)
        {
            // The binder's message names the key: "Failed to convert configuration value at 'Jobs:Workers' to type 'System.Int32'."
            throw new ConfigurationException("invalid configuration: " + e.Message);
        }
    }

    /// <summary>Resolving the options is what checks them; done first thing at start.</summary>
    public static VirtdConfiguration Resolve(IServiceProvider services) => services.GetRequiredService<VirtdConfiguration>();
}
