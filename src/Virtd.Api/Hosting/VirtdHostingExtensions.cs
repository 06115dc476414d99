using FluentValidation;
using Virtd.Core;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;
using Virtd.Core.Observability;
using Virtd.Core.Persistence;
using Virtd.Drivers.Qemu;
using Virtd.Drivers.Simulated;

namespace Virtd.Api.Hosting;

public static class VirtdHostingExtensions
{
    /// <summary>Request bodies larger than this get 413 <c>payload-too-large</c>.</summary>
    public const long MaxRequestBodyBytes = 1024 * 1024;

    /// <summary>Configuration sources, options, the core services and the daemon's hosted service.</summary>
    public static IHostApplicationBuilder AddVirtdCore(this IHostApplicationBuilder builder, string[] args)
    {
        // Every key works as VIRTD_Key (sections with __) and as --Key value; the command line wins.
        builder.Configuration.AddEnvironmentVariables("VIRTD_");
        builder.Configuration.AddCommandLine(args);
        // From here the configuration names the state directory: its job journal is read while the host is built.
        var preload = JournalPreload.Begin(builder.Configuration);

        var s = builder.Services;
        s.AddSingleton(TimeProvider.System);
        VirtdConfiguration.AddOptions(s);
        s.AddSingleton<GuestsOnStop>();

        s.AddMetrics();
        s.AddSingleton(sp => new VirtdMetrics(sp.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>()));
        s.AddSingleton<EventBus>();
        s.AddSingleton<DomainRegistry>();
        s.AddSingleton<JobStore>();
        s.AddSingleton<IdempotencyKeys>();
        s.AddSingleton(_ => preload); // by a factory: the container disposes it, and so waits for the read
        s.AddSingleton(sp => new JobJournal(Path.Combine(sp.GetRequiredService<VirtdOptions>().StateDirectory, "jobs"), sp.GetRequiredService<ILogger<JobJournal>>()));
        s.AddSingleton(sp => new JobScheduler(sp.GetRequiredService<JobsOptions>(), sp.GetRequiredService<EventBus>(), sp.GetRequiredService<JobStore>(),
            sp.GetRequiredService<DomainLifecycle>(), sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<ILogger<JobScheduler>>(),
            sp.GetRequiredService<JobsOptions>().Journal ? sp.GetRequiredService<JobJournal>() : null, sp.GetRequiredService<VirtdMetrics>()));
        s.AddSingleton(sp => new StoragePaths(sp.GetRequiredService<StorageOptions>().Pools));
        s.AddSingleton<Virtd.Core.Storage.VolumeService>();
        // The validator as IValidator<DomainDefinition>, one per daemon. Registered by name, not by FluentValidation's assembly
        // scan (AddValidatorsFromAssemblyContaining), which finds validators by reflection over every type: not under Native AOT.
        s.AddSingleton<DomainDefinitionValidator>();
        s.AddSingleton<IValidator<DomainDefinition>>(sp => sp.GetRequiredService<DomainDefinitionValidator>());
        s.AddSingleton(sp => new DomainStore(sp.GetRequiredService<VirtdOptions>().DomainsDirectory, sp.GetRequiredService<ILogger<DomainStore>>()));
        s.AddSingleton(sp => new DriverCatalog(sp.GetServices<IHypervisorDriver>()));
        s.AddSingleton<ResourceLimits>();
        s.AddSingleton<DomainLifecycle>();
        s.AddSingleton<DomainService>();
        s.AddSingleton<DaemonStatus>();
        s.AddHostedService<VirtdDaemon>();

        s.ConfigureHttpJsonOptions(o => ApiJson.Configure(o.SerializerOptions));
        s.Configure<RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        // The host's own bound stays above the daemon's, so phase 2 always gets to log what it waited for.
        // Resolved while the host is built: a bad value is reported by DaemonRunner right after, not thrown from here.
        s.AddOptions<HostOptions>().Configure<IServiceProvider>((o, sp) =>
        {
            try { o.ShutdownTimeout = sp.GetRequiredService<VirtdConfiguration>().StopBound + TimeSpan.FromSeconds(5); }
            catch (ConfigurationException) { }
        });
        s.AddProblemDetails();
        return builder;
    }

    public static IHostApplicationBuilder AddQemuDriver(this IHostApplicationBuilder builder)
    {
        builder.Services.AddSingleton<QemuImages>();
        builder.Services.AddSingleton<IImageChecker>(sp => sp.GetRequiredService<QemuImages>());
        builder.Services.AddSingleton<IVolumeTool>(sp => sp.GetRequiredService<QemuImages>());
        builder.Services.AddSingleton<QemuDriver>();
        builder.Services.AddSingleton<IHypervisorDriver>(sp => sp.GetRequiredService<QemuDriver>());
        return builder;
    }

    public static IHostApplicationBuilder AddSimulatedDriver(this IHostApplicationBuilder builder)
    {
        builder.Services.AddSingleton<SimulatedDriver>();
        builder.Services.AddSingleton<IHypervisorDriver>(sp => sp.GetRequiredService<SimulatedDriver>());
        return builder;
    }
}
