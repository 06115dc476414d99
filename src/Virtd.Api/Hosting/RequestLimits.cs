using System.Collections.Concurrent;
using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.RateLimiting;
using Virtd.Api.Access;
using Virtd.Api.Errors;
using Virtd.Core.Configuration;
using Virtd.Core.Errors;

namespace Virtd.Api.Hosting;

/// <summary>
/// What one caller may ask of the daemon (issue "Hardening", <c>Limits</c>): Kestrel's connection and header limits,
/// requests per second per caller, and open event streams.
/// </summary>
public static class RequestLimits
{
    /// <summary>Request headers, all together; a bearer token and a session cookie take under 200 bytes.</summary>
    public const int MaxHeadersBytes = 32 * 1024;

    public const int MaxHeaderCount = 64;

    public static WebApplicationBuilder AddRequestLimits(this WebApplicationBuilder builder)
    {
        builder.WebHost.ConfigureKestrel((_, k) =>
        {
            k.Limits.MaxRequestBodySize = VirtdHostingExtensions.MaxRequestBodyBytes;
            k.Limits.MaxRequestHeadersTotalSize = MaxHeadersBytes;
            k.Limits.MaxRequestHeaderCount = MaxHeaderCount;
            k.Limits.MaxRequestLineSize = 8 * 1024; // paths and query strings are short here
            k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(15); // a client that trickles headers is cut off
            k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(120);
            k.Limits.Http2.MaxStreamsPerConnection = 100;
            // Bound while the host is built; a bad value is reported by DaemonRunner (exit 2) before anything binds.
            try { k.Limits.MaxConcurrentConnections = k.ApplicationServices.GetRequiredService<LimitsOptions>().Connections; }
            catch (ConfigurationException) { }
        });

        var s = builder.Services;
        s.AddSingleton<StreamLimits>();
        s.AddRateLimiter(_ => { });
        s.AddOptions<RateLimiterOptions>().Configure<IServiceProvider>((o, sp) =>
        {
            int perSecond;
            try { perSecond = sp.GetRequiredService<LimitsOptions>().RequestsPerSecond; }
            catch (ConfigurationException) { return; }
            if (perSecond <= 0) return;
            o.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(http =>
                Exempt(http.Request.Path)
                    ? RateLimitPartition.GetNoLimiter("")
                    : RateLimitPartition.GetFixedWindowLimiter(Partition(http), _ => new FixedWindowRateLimiterOptions
                    {
                        PermitLimit = perSecond, Window = TimeSpan.FromSeconds(1), QueueLimit = 0, AutoReplenishment = true,
                    }));
            o.OnRejected = (context, _) =>
            {
                var retry = context.Lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? Math.Max(1, (int)Math.Ceiling(after.TotalSeconds)) : 1;
                return new ValueTask(ProblemResponses.WriteAsync(context.HttpContext, new VirtdException(ErrorCodes.RateLimited, 429, "Too many requests",
                    $"more than {perSecond} requests in a second from this caller (Limits:RequestsPerSecond); retry after {retry} s")
                    { RetryAfterSeconds = retry }));
            };
        });
        return builder;
    }

    /// <summary>
    /// Requests per second per caller, after the caller is known: a token's or Unix peer's identity, else the client
    /// address. Nothing at all is added while <c>Limits:RequestsPerSecond</c> is 0 (the default).
    /// </summary>
    public static WebApplication UseRequestRateLimit(this WebApplication app)
    {
        if (int.TryParse(app.Configuration["Limits:RequestsPerSecond"], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0)
            app.UseRateLimiter();
        return app;
    }

    /// <summary>Probes of a supervisor or load balancer are never limited.</summary>
    private static bool Exempt(PathString path) => path.StartsWithSegments("/healthz") || path.StartsWithSegments("/readyz");

    /// <summary>The caller as limits count it: the token's or Unix peer's identity, else the client address.</summary>
    public static string Partition(HttpContext http) =>
        http.User is CallerPrincipal p ? "caller:" + p.Caller.Identity : "address:" + Clients.Address(http);
}

/// <summary>Open event streams, in all and per caller (<c>Limits:EventStreams</c>, <c>Limits:EventStreamsPerIdentity</c>).</summary>
public sealed class StreamLimits(LimitsOptions options)
{
    private readonly ConcurrentDictionary<string, int> _byIdentity = new();
    private int _total;

    public int Open => Volatile.Read(ref _total);

    /// <summary>Takes a slot for <paramref name="identity"/>, or throws 429 <c>too-many-streams</c>; dispose the slot when the stream ends.</summary>
    public Slot Acquire(string identity)
    {
        if (Interlocked.Increment(ref _total) > options.EventStreams)
        {
            Interlocked.Decrement(ref _total);
            throw Refused($"{options.EventStreams} event streams are open, the most Limits:EventStreams allows");
        }
        var mine = _byIdentity.AddOrUpdate(identity, 1, (_, n) => n + 1);
        if (mine > options.EventStreamsPerIdentity)
        {
            Release(identity);
            throw Refused($"this caller has {options.EventStreamsPerIdentity} event streams open, the most Limits:EventStreamsPerIdentity allows; close one first");
        }
        return new Slot(this, identity);
    }

    private void Release(string identity)
    {
        Interlocked.Decrement(ref _total);
        while (true)
        {
            if (!_byIdentity.TryGetValue(identity, out var n)) return;
            if (n <= 1)
            {
                if (_byIdentity.TryRemove(KeyValuePair.Create(identity, n))) return;
            }
            else if (_byIdentity.TryUpdate(identity, n - 1, n)) return;
        }
    }

    private static VirtdException Refused(string detail) => new(ErrorCodes.TooManyStreams, 429, "Too many event streams", detail) { RetryAfterSeconds = 5 };

    public sealed class Slot(StreamLimits owner, string identity) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) owner.Release(identity);
        }
    }
}
