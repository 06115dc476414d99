using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Options;
using Virtd.Api.Access;
using Virtd.Core.Configuration;
using Virtd.Core.Events;
using Virtd.Core.Observability;
using Virtd.Drivers.Qemu;

namespace Virtd.Api.Hosting;

/// <summary>A configuration value that cannot be used; the daemon exits with code 2 and this message.</summary>
public sealed class ConfigurationException(string message) : Exception(message);

/// <summary>All options, each bound through <see cref="IOptions{T}"/> from its section and checked at start.</summary>
public sealed record VirtdConfiguration(VirtdOptions Virtd, StorageOptions Storage, JobsOptions Jobs, SimulatedOptions Simulated, EventsOptions Events, QemuOptions Qemu,
    GuestsOptions Guests, SecurityOptions Security, ListenerOptions Listen, LimitsOptions Limits, MetricsOptions Metrics, MemoryOptions Memory)
{
    /// <summary>
    /// The whole of shutdown phase 2: <c>ShutdownTimeout</c>, plus <c>Guests:OverallTimeout</c> when guests are shut down with the daemon.
    /// </summary>
    public TimeSpan StopBound => Virtd.ShutdownTimeout + (Guests.OnDaemonStop == GuestStopPolicy.Shutdown ? Guests.OverallTimeout : TimeSpan.Zero);

    /// <summary>
    /// Registers every options class: bound from its section (a value of the wrong type throws <see cref="ConfigurationException"/>
    /// naming the key), checked by an <see cref="IValidateOptions{TOptions}"/> whose messages name the key, with
    /// <c>ValidateOnStart</c>; each options object is also a singleton of its own type, as components take it.
    /// </summary>
    public static void AddOptions(IServiceCollection s)
    {
        Add<VirtdOptions>(s, null, static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<StorageOptions>(s, "Storage", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        s.AddOptions<StorageOptions>().PostConfigure<IOptions<VirtdOptions>>((storage, virtd) =>
        {
            // A StateDirectory that fails its own checks is reported once, as VirtdOptions' fault, not again as Storage's.
            try { storage.Pools.TryAdd(StorageOptions.DefaultPool, Path.Combine(virtd.Value.StateDirectory, "images")); }
            catch (OptionsValidationException) { }
        });
        Add<JobsOptions>(s, "Jobs", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<SimulatedOptions>(s, "Simulated", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<EventsOptions>(s, "Events", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<QemuOptions>(s, "Qemu", static (c, o) => c.Bind(o), q => q.Validate());
        Add<GuestsOptions>(s, "Guests", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<SecurityOptions>(s, "Security", static (c, o) => c.Bind(o), security => security.Validate());
        // Plain HTTP on a network address is a fault of the listen addresses that only the security options can excuse.
        s.AddSingleton<IValidateOptions<SecurityOptions>>(sp => new Checks<SecurityOptions>(security =>
            !security.AllowPlainHttpOnNetwork && ListenAddresses.PlainHttpOnNetwork(sp.GetRequiredService<IConfiguration>()) is var (key, url)
                ? [$"{key}: {url} is plain HTTP on a network address, so tokens and session cookies would cross the network in clear text; " +
                   "use https:// (README: TLS), a loopback address or the Unix sockets, or set Security:AllowPlainHttpOnNetwork=true"]
                : []));
        Add<ListenerOptions>(s, "Listen", static (c, o) => c.Bind(o), _ => []);
        Add<LimitsOptions>(s, "Limits", static (c, o) => c.Bind(o), limits => limits.Validate());
        Add<MetricsOptions>(s, "Metrics", static (c, o) => c.Bind(o), OptionsValidation.Validate);
        Add<MemoryOptions>(s, "Memory", static (c, o) => c.Bind(o), memory => memory.Validate());

        s.AddSingleton(sp => new VirtdConfiguration(Value<VirtdOptions>(sp), Value<StorageOptions>(sp), Value<JobsOptions>(sp), Value<SimulatedOptions>(sp),
            Value<EventsOptions>(sp), Value<QemuOptions>(sp), Value<GuestsOptions>(sp), Value<SecurityOptions>(sp), Value<ListenerOptions>(sp),
            Value<LimitsOptions>(sp), Value<MetricsOptions>(sp), Value<MemoryOptions>(sp)));
    }

    /// <summary>The options' value; one that fails its checks is a <see cref="ConfigurationException"/>, as everywhere in the daemon.</summary>
    private static T Value<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] T>(IServiceProvider sp) where T : class
    {
        try { return sp.GetRequiredService<IOptions<T>>().Value; }
        catch (OptionsValidationException e) { throw new ConfigurationException("invalid configuration: " + string.Join("; ", e.Failures)); }
    }

    /// <summary>
    /// <paramref name="bind"/> is <c>(c, o) =&gt; c.Bind(o)</c> written where <typeparamref name="T"/> is known, so that the
    /// configuration binding generator writes the binding code for it (no reflection, as Native AOT needs).
    /// </summary>
    private static void Add<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] T>(
        IServiceCollection s, string? section, Action<IConfiguration, T> bind, Func<T, IEnumerable<string>> check) where T : class
    {
        s.AddOptions<T>().Configure<IConfiguration>((o, configuration) => Bind(section is null ? configuration : configuration.GetSection(section), o, bind))
            .ValidateOnStart();
        s.AddSingleton<IValidateOptions<T>>(new Checks<T>(check));
        s.AddSingleton(Value<T>);
    }

    private static void Bind<T>(IConfiguration configuration, T options, Action<IConfiguration, T> bind)
    {
        try { bind(configuration, options); }
        catch (InvalidOperationException e)
        {
            // The binder's message names the key: "Failed to convert configuration value at 'Jobs:Workers' to type 'System.Int32'."
            throw new ConfigurationException("invalid configuration: " + e.Message);
        }
    }

    /// <summary>One options class's checks, as messages that each start with the key.</summary>
    private sealed class Checks<T>(Func<T, IEnumerable<string>> check) : IValidateOptions<T> where T : class
    {
        public ValidateOptionsResult Validate(string? name, T options) =>
            check(options).ToList() is { Count: > 0 } errors ? ValidateOptionsResult.Fail(errors) : ValidateOptionsResult.Success;
    }

    /// <summary>
    /// Runs the start-up checks (what <c>ValidateOnStart</c> runs when the host starts) before the host starts, so that a bad
    /// value gives one line naming every key at fault, then returns the options.
    /// </summary>
    public static VirtdConfiguration Resolve(IServiceProvider services)
    {
        try
        {
            services.GetRequiredService<IStartupValidator>().Validate();
        }
        catch (OptionsValidationException e)
        {
            throw new ConfigurationException("invalid configuration: " + string.Join("; ", e.Failures));
        }
        catch (AggregateException e) when (e.InnerExceptions.All(x => x is OptionsValidationException))
        {
            throw new ConfigurationException("invalid configuration: " +
                string.Join("; ", e.InnerExceptions.SelectMany(x => ((OptionsValidationException)x).Failures)));
        }
        return services.GetRequiredService<VirtdConfiguration>();
    }
}
