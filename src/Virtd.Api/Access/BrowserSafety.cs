using Microsoft.Extensions.Primitives;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>
/// What keeps a web page from acting through the daemon: the Host header must name this daemon (DNS rebinding);
/// a change made with the session cookie must be sent as <c>application/json</c> (a cross-site form or a "simple"
/// fetch cannot) and, when the browser says where it comes from, from this daemon's own origin (CSRF).
/// </summary>
public static class BrowserSafety
{
    /// <summary>The names a TCP request's Host may carry: <c>AllowedHosts</c> (default the loopback names) plus <c>Security:Hostnames</c>.</summary>
    public static HostList AllowedHosts(IConfiguration configuration, SecurityOptions security)
    {
        var configured = configuration["AllowedHosts"];
        var names = string.IsNullOrWhiteSpace(configured) ? ["localhost", "127.0.0.1", "[::1]"]
            : configured.Split(';', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList();
        names.AddRange(security.Hostnames);
        return new HostList(names);
    }

    /// <summary>A request over TCP whose Host is not this daemon's gets 400 <c>host-not-allowed</c>; the Unix sockets need no check.</summary>
    public static IApplicationBuilder UseAllowedHosts(this IApplicationBuilder app)
    {
        HostList? hosts = null;
        return app.Use((http, next) =>
            http.Features.Get<UnixPeer>() is null && !(hosts ??= app.ApplicationServices.GetRequiredService<HostList>()).Allows(http.Request.Host.Host)
                ? Errors.ProblemResponses.WriteAsync(http, AccessErrors.HostNotAllowed(http.Request.Host.Value ?? ""))
                : next(http));
    }

    /// <summary>For a change authenticated by the session cookie: the refusal, or null when it may go on.</summary>
    public static VirtdException? CheckCookieChange(HttpContext http)
    {
        if (http.User is not CallerPrincipal { Caller.Method: AuthMethod.Session } || !AuditLog.IsChange(http.Request)) return null;
        return CheckOrigin(http) ?? (IsJson(http.Request.ContentType) ? null
            : AccessErrors.CsrfRejected("a change made with the session cookie must be sent with Content-Type: application/json"));
    }

    /// <summary>An <c>Origin</c> header, when present, must be this daemon's own (<c>scheme://host[:port]</c> of the request).</summary>
    public static VirtdException? CheckOrigin(HttpContext http)
    {
        var origin = http.Request.Headers.Origin;
        if (StringValues.IsNullOrEmpty(origin)) return null;
        var own = $"{http.Request.Scheme}://{http.Request.Host.Value}";
        return origin.Count == 1 && string.Equals(origin[0], own, StringComparison.OrdinalIgnoreCase) ? null
            : AccessErrors.CsrfRejected($"requests from origin '{origin}' may not use the session cookie; only {own} may");
    }

    private static bool IsJson(string? contentType)
    {
        if (contentType is null) return false;
        var media = contentType.AsSpan();
        var semicolon = media.IndexOf(';');
        if (semicolon >= 0) media = media[..semicolon];
        return media.Trim().Equals("application/json", StringComparison.OrdinalIgnoreCase);
    }
}

/// <summary>Host names matched without their port, case-insensitively; <c>*</c> allows any, <c>*.example.com</c> any subdomain.</summary>
public sealed class HostList(IReadOnlyList<string> names)
{
    private readonly bool _any = names.Contains("*");

    public IReadOnlyList<string> Names { get; } = names;

    public bool Allows(string host)
    {
        if (_any) return true;
        if (string.IsNullOrEmpty(host)) return false;
        foreach (var name in Names)
        {
            if (string.Equals(name, host, StringComparison.OrdinalIgnoreCase)) return true;
            if (name.StartsWith("*.", StringComparison.Ordinal) && host.EndsWith(name[1..], StringComparison.OrdinalIgnoreCase)) return true;
        }
        return false;
    }
}
