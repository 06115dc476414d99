using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.AspNetCore.Http.HttpResults;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Observability;

namespace Virtd.Api.Metrics;

/// <summary>OpenTelemetry's Prometheus exporter, as a request pipeline of its own.</summary>
public sealed class PrometheusScrape
{
    public RequestDelegate? Pipeline { get; set; }
}

/// <summary>Marks <c>/metrics</c>: with <c>Metrics:Anonymous=true</c> a request without credentials from loopback may scrape.</summary>
public sealed record AnonymousScrape;

/// <summary>
/// Metrics and traces through OpenTelemetry: the <c>Virtd</c> meter with ASP.NET Core's and the runtime's, served as
/// Prometheus text (or OpenMetrics when asked) at <c>GET /metrics</c>; per-VM figures collected in the background; and,
/// only when <c>OpenTelemetry:OtlpEndpoint</c> is set, traces (request → job → QMP command) exported over OTLP.
/// </summary>
public static class MetricsApi
{
    public static IHostApplicationBuilder AddObservability(this IHostApplicationBuilder builder)
    {
        var s = builder.Services;
        s.AddSingleton<DomainStatsCollector>();
        s.AddHostedService(sp => sp.GetRequiredService<DomainStatsCollector>());
        s.AddSingleton<DaemonGauges>();

        // Whether to build the pipelines is decided here; a value that is not a boolean is reported at start by the options check.
        var metrics = !bool.TryParse(builder.Configuration["Metrics:Enabled"], out var on) || on;
        var otlp = builder.Configuration["OpenTelemetry:OtlpEndpoint"];
        var tracing = !string.IsNullOrWhiteSpace(otlp) && Uri.TryCreate(otlp, UriKind.Absolute, out _);
        if (!metrics && !tracing) return builder; // nothing listens: instruments and the trace source cost a branch
        var otel = s.AddOpenTelemetry().ConfigureResource(r => r.AddService("virtd", serviceVersion: typeof(MetricsApi).Assembly.GetName().Version?.ToString()));
        if (metrics)
        {
            var aspNetCore = bool.TryParse(builder.Configuration["Metrics:AspNetCore"], out var withAspNetCore) && withAspNetCore;
            otel.WithMetrics(m =>
            {
                m.AddMeter(VirtdMetrics.MeterName);
                // Kestrel's connection meter (recorded per connection). ASP.NET Core's request meter only with Metrics:AspNetCore=true:
                // recorded on every request, it took a read of one domain from 41 to 74 µs of daemon CPU in scripts/bench/api.
                // Never the routing and memory-pool counters, which count on every request and every buffer.
                m.AddMeter("Microsoft.AspNetCore.Server.Kestrel");
                if (aspNetCore) m.AddMeter("Microsoft.AspNetCore.Hosting");
                var domainSeries = int.TryParse(builder.Configuration["Metrics:DomainSeries"], out var limit) ? limit : MetricsOptions.DefaultDomainSeries;
                m.AddRuntimeInstrumentation()
                    .AddView(instrument => StreamOf(instrument, domainSeries))
                    .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0);
            });
            s.AddSingleton<PrometheusScrape>();
        }
        if (tracing)
        {
            otel.WithTracing(t => t
                .AddSource(VirtdTracing.SourceName)
                .AddAspNetCoreInstrumentation(o => o.Filter = http => !http.Request.Path.StartsWithSegments("/metrics"))
                .AddOtlpExporter(o => o.Endpoint = new Uri(otlp!)));
        }
        return builder;
    }

    /// <summary>The series any metric that is not per VM may have: its labels are kinds, outcomes, QMP commands, generations.</summary>
    public const int DaemonSeries = 256;

    /// <summary>
    /// Every instrument's one stream. The SDK allocates a metric's series up front, as many as its cardinality limit (2000 by
    /// default: about 5 MB of large-object heap for our instruments): the daemon's own have <see cref="DaemonSeries"/>, the
    /// per-VM ones (<c>virtd.domain.*</c>) <c>Metrics:DomainSeries</c>. Past the limit, new label sets are counted in one
    /// overflow series (<c>otel_metric_overflow="true"</c>). And Prometheus keeps <c>_count</c> for histograms and summaries
    /// (promtool check metrics says so): three of the runtime's gauges are renamed.
    /// </summary>
    private static MetricStreamConfiguration StreamOf(Instrument instrument, int domainSeries) => new()
    {
        Name = instrument.Name switch
        {
            "dotnet.assembly.count" => "dotnet.assemblies",
            "dotnet.process.cpu.count" => "dotnet.process.cpus",
            "dotnet.timer.count" => "dotnet.timers",
            _ => null,
        },
        CardinalityLimit = instrument.Meter.Name != VirtdMetrics.MeterName ? DaemonSeries : instrument.Name switch
        {
            "virtd.domain.state" => domainSeries * Enum.GetValues<DomainState>().Length, // a series per state of each domain
            _ when instrument.Name.StartsWith("virtd.domain.", StringComparison.Ordinal) => domainSeries,
            _ => DaemonSeries,
        },
    };

    public static WebApplication MapMetricsApi(this WebApplication app)
    {
        if (app.Services.GetService<PrometheusScrape>() is { } scrape)
        {
            // The exporter's own middleware, as a branch that always matches: the route below is an ordinary endpoint, so the
            // role check, the OpenAPI document and the access tests see it like any other.
            scrape.Pipeline = ((IApplicationBuilder)app).New().UseOpenTelemetryPrometheusScrapingEndpoint(_ => true).Build();
        }
        app.MapGet("/metrics", ScrapeAsync).WithTags("Host").WithName("GetMetrics")
            .WithSummary("Prometheus text exposition of the daemon's and every VM's figures (OpenMetrics when Accept asks for it)")
            .WithDescription("Needs the reader role; with Metrics:Anonymous=true a request without credentials from loopback may scrape. " +
                             "404 when Metrics:Enabled=false. The series are listed in the README's Metrics section.")
            .Requires(Role.Reader).WithMetadata(new AnonymousScrape())
            .Produces(200, contentType: "text/plain").Problems(404, 413);
        return app;
    }

    private static async Task ScrapeAsync(HttpContext http, CancellationToken cancellationToken)
    {
        if (http.RequestServices.GetService<PrometheusScrape>()?.Pipeline is not { } scrape)
            throw new VirtdException(ErrorCodes.NotFound, 404, "Not found", "metrics are off (Metrics:Enabled=false)");
        // A body nobody reads is drained by Kestrel after the answer, and one past the body limit then resets the
        // connection under a long answer still in flight (the fuzz tier sent 2 MiB): read it first, 413 past the limit.
        if (http.Request.ContentLength is > 0 || http.Request.Headers.TransferEncoding.Count > 0)
            await http.Request.Body.CopyToAsync(Stream.Null, cancellationToken).ConfigureAwait(false);
        http.RequestServices.GetRequiredService<DaemonGauges>(); // its observable instruments exist from the first scrape on
        await scrape(http).ConfigureAwait(false);
    }

    /// <summary>Whether a request without credentials may scrape: <c>Metrics:Anonymous</c>, from a loopback address.</summary>
    public static bool MayScrapeAnonymously(HttpContext http) =>
        http.GetEndpoint()?.Metadata.GetMetadata<AnonymousScrape>() is not null
        && http.RequestServices.GetRequiredService<MetricsOptions>().Anonymous
        && http.Connection.RemoteIpAddress is { } ip && IPAddress.IsLoopback(ip);
}
