using System.Net;
using Microsoft.AspNetCore.Cors.Infrastructure;
using Microsoft.AspNetCore.HostFiltering;
using Virtd.Api.Hosting;
using Virtd.Core.Configuration;

namespace Virtd.Api.Access;

/// <summary>
/// Who may do what, on every way in (issue "Access control"): the Unix sockets, bearer tokens and the dashboard's
/// session over TCP, roles as endpoint metadata, browser safety (Host, CSRF, CORS), failed-authentication limits and
/// the audit log.
/// </summary>
public static class AccessControl
{
    /// <summary>Listen addresses (TCP plus the Unix sockets) and the services; call before <c>Build</c>.</summary>
    public static WebApplicationBuilder AddAccessControl(this WebApplicationBuilder builder)
    {
        var config = builder.Configuration;
        // Kestrel takes its addresses before the daemon's options are bound, so the socket paths are read here, the
        // same way VirtdConfiguration reads them (a bad value stops the daemon before anything binds).
        var sockets = new UnixSockets(config["RunDirectory"] is { Length: > 0 } run ? run : DefaultPaths.RunDirectory(),
            !bool.TryParse(config["Listen:UnixSockets"], out var on) || on);
        if (config.GetSection("Kestrel:Endpoints").GetChildren().Any())
        {
            // Kestrel's own endpoint configuration replaces `urls`: the sockets join it.
            var extra = new Dictionary<string, string?>();
            var i = 0;
            foreach (var url in sockets.Urls) extra[$"Kestrel:Endpoints:VirtdUnixSocket{i++}:Url"] = url;
            config.AddInMemoryCollection(extra);
        }
        else
        {
            builder.WebHost.UseUrls([.. ListenAddresses.Tcp(config), .. sockets.Urls]);
        }
        builder.WebHost.ConfigureKestrel((_, kestrel) => kestrel.ConfigureEndpointDefaults(listen =>
            sockets.OnBind(listen, kestrel.ApplicationServices.GetRequiredService<ILogger<UnixSockets>>())));

        var s = builder.Services;
        s.AddSingleton(sockets);
        s.AddSingleton(sp => new TokenStore(sp.GetRequiredService<VirtdOptions>().StateDirectory, sp.GetRequiredService<TimeProvider>(),
            sp.GetRequiredService<ILogger<TokenStore>>()));
        s.AddSingleton(sp => sp.GetRequiredService<SecurityOptions>().AuditLog is { } configured
            ? new AuditLog(configured, ownsFile: false, sp.GetRequiredService<ILogger<AuditLog>>())
            : new AuditLog(Path.Combine(sp.GetRequiredService<VirtdOptions>().StateDirectory, "log", "audit.log"), ownsFile: true, sp.GetRequiredService<ILogger<AuditLog>>()));
        s.AddSingleton<AuthFailureLimiter>();
        s.AddHostedService<AccessLifecycle>();

        // Our own Host check answers with problem+json (and skips the Unix sockets); ASP.NET Core's would answer first, in HTML.
        s.Configure<HostFilteringOptions>(o => o.AllowedHosts = ["*"]);
        s.AddSingleton(sp => BrowserSafety.AllowedHosts(sp.GetRequiredService<IConfiguration>(), sp.GetRequiredService<SecurityOptions>()));
        s.AddCors();
        s.AddOptions<CorsOptions>().Configure<IServiceProvider>((o, sp) =>
        {
            var origins = sp.GetRequiredService<SecurityOptions>().CorsOrigins;
            if (origins.Count == 0) return; // no policy: no CORS headers, preflights refused
            o.AddDefaultPolicy(p => p.WithOrigins([.. origins]).AllowAnyHeader().WithMethods("GET", "POST", "PUT", "DELETE")
                .WithExposedHeaders("Location", "ETag", "Retry-After", "WWW-Authenticate", "Link"));
        });
        return builder;
    }

    /// <summary>
    /// CORS (when origins are configured), who is calling, the role check, then the Host check. A caller without
    /// credentials learns nothing, whatever Host it sent: a guest reaching the daemon through its user NIC's
    /// 10.0.2.2 gets 401, not a hint about names.
    /// </summary>
    public static WebApplication UseAccessControl(this WebApplication app)
    {
        if (app.Configuration.GetSection("Security:CorsOrigins").GetChildren().Any()) app.UseCors();
        app.UseVirtdAuthentication();
        app.UseRoles();
        app.UseAllowedHosts();
        return app;
    }
}

/// <summary>
/// Access control's part of the daemon's life: tokens are read before the listeners bind (the first start creates the
/// initial admin token), the Unix sockets get their modes once bound (before the daemon reports ready), and at stop
/// the tokens' last-use times are written and the socket files removed.
/// </summary>
public sealed class AccessLifecycle(TokenStore tokens, UnixSockets sockets, AuditLog audit, ILogger<AccessLifecycle> log)
    : IHostedLifecycleService
{
    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        tokens.Load();
        log.LogInformation("stage tokens: {Ms:0.0} ms ({Count} tokens in {File})", sw.Elapsed.TotalMilliseconds, tokens.List().Count, tokens.FilePath);
        return Task.CompletedTask;
    }

    public Task StartedAsync(CancellationToken cancellationToken)
    {
        sockets.SetModes(log);
        return Task.CompletedTask;
    }

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken)
    {
        tokens.Flush();
        audit.Dispose();
        sockets.Remove();
        return Task.CompletedTask;
    }
}

/// <summary>The TCP addresses the daemon listens on, and the check that none of them sends secrets in clear text over a network.</summary>
public static class ListenAddresses
{
    public const string DefaultUrl = "http://127.0.0.1:8470";

    /// <summary><c>urls</c>; else <c>http_ports</c>/<c>https_ports</c> (every interface, as ASP.NET Core binds them); else <see cref="DefaultUrl"/>.</summary>
    public static List<string> Tcp(IConfiguration c)
    {
        if (c["urls"] is { } urls && !string.IsNullOrWhiteSpace(urls)) return Split(urls);
        var list = new List<string>();
        foreach (var p in Split(c["http_ports"])) list.Add($"http://*:{p}");
        foreach (var p in Split(c["https_ports"])) list.Add($"https://*:{p}");
        return list.Count > 0 ? list : [DefaultUrl];
    }

    /// <summary>
    /// The first configured address that is plain HTTP on a network interface (with the configuration key that set
    /// it), or null. Loopback names and addresses and Unix sockets are fine.
    /// </summary>
    public static (string Key, string Url)? PlainHttpOnNetwork(IConfiguration c)
    {
        var endpoints = c.GetSection("Kestrel:Endpoints").GetChildren().ToList();
        var urls = endpoints.Count > 0
            ? endpoints.Select(e => ($"Kestrel:Endpoints:{e.Key}:Url", e["Url"] ?? ""))
            : Tcp(c).Select(u => ("urls", u));
        foreach (var (key, url) in urls)
            if (IsPlainHttpOnNetwork(url)) return (key, url);
        return null;
    }

    public static bool IsPlainHttpOnNetwork(string url)
    {
        if (!url.StartsWith("http://", StringComparison.OrdinalIgnoreCase)) return false;
        var rest = url[7..];
        if (rest.StartsWith("unix:", StringComparison.OrdinalIgnoreCase)) return false;
        string host;
        if (rest.StartsWith('['))
        {
            var close = rest.IndexOf(']');
            host = close > 0 ? rest[1..close] : rest;
        }
        else
        {
            var end = rest.IndexOfAny([':', '/']);
            host = end >= 0 ? rest[..end] : rest;
        }
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)) return false;
        return !(IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));
    }

    private static List<string> Split(string? text) =>
        (text ?? "").Split(';', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList();
}
