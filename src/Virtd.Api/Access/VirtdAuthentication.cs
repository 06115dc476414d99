using System.Collections.Concurrent;
using System.Threading.RateLimiting;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>
/// Who is calling, from the first of: the Unix socket the request came in on (its role, the peer's uid); an
/// <c>Authorization: Bearer</c> token; the dashboard's session cookie. The caller becomes <c>HttpContext.User</c>
/// (one principal per token, session or connection, made once), which ASP.NET Core's authorization then checks
/// against the endpoint's policy. No credentials leaves the user anonymous (the policy answers 401); wrong ones are
/// kept as an <see cref="AccessDenied"/> for that answer, count against the client's address and are logged at warning.
/// This is a middleware rather than an AuthenticationHandler: a handler is built and initialised for every request,
/// and that machinery cost more than all of a domain read (measured: +20 µs of CPU on a 25 µs read).
/// </summary>
public static class VirtdAuthentication
{
    public const string SchemeName = "virtd";
    public const string SessionCookie = "virtd_session";

    public static IApplicationBuilder UseVirtdAuthentication(this IApplicationBuilder app)
    {
        // Resolved at the first request: the options behind them are checked at start, not while the pipeline is built.
        TokenStore? tokens = null;
        AuthFailureLimiter? limiter = null;
        return app.Use((http, next) =>
        {
            tokens ??= app.ApplicationServices.GetRequiredService<TokenStore>();
            limiter ??= app.ApplicationServices.GetRequiredService<AuthFailureLimiter>();
            if (Identify(http, tokens, limiter) is { } caller) http.User = caller.Principal;
            return next(http);
        });
    }

    private static Caller? Identify(HttpContext http, TokenStore tokens, AuthFailureLimiter limiter)
    {
        if (http.Features.Get<UnixPeer>() is { } peer) return peer.Caller;

        var authorization = http.Request.Headers.Authorization;
        var cookie = authorization.Count == 0 ? http.Request.Cookies[SessionCookie] : null;
        if (authorization.Count == 0 && cookie is null) return null;

        if (limiter.Blocked(http))
        {
            http.Features.Set(new AccessDenied(AccessErrors.TooManyFailures(limiter.PerSecond)));
            return null;
        }

        string problem;
        if (authorization.Count > 0)
        {
            var value = authorization.ToString().AsSpan().Trim();
            if (value.Length > 7 && value.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
            {
                var check = tokens.CheckToken(value[7..].Trim(), out var token);
                if (check == SecretCheck.Valid) return token!.Caller;
                problem = check == SecretCheck.Expired ? "the bearer token has expired" : "the bearer token is not valid (unknown or revoked)";
            }
            else
            {
                problem = "the Authorization header must be 'Bearer <token>'";
            }
        }
        else
        {
            var check = tokens.CheckSession(cookie, out var session);
            if (check == SecretCheck.Valid) return session!.Caller;
            problem = check == SecretCheck.Expired ? "the session has expired; sign in again" : "the session is not valid (signed out, or its token was revoked); sign in again";
        }
        var client = Clients.Address(http);
        limiter.Failed(client);
        http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Virtd.Api.Access")
            .LogWarning("authentication failed from {Client} on {Method} {Path}: {Problem}", client, http.Request.Method, http.Request.Path, problem);
        http.Features.Set(new AccessDenied(AccessErrors.Unauthenticated(problem)));
        return null;
    }
}

/// <summary>Why the request's credentials were refused: the problem the client gets when its endpoint needs a caller.</summary>
public sealed record AccessDenied(VirtdException Problem);

/// <summary>
/// Failed authentications per client address, counted by ASP.NET Core's rate limiter (a fixed one-second window
/// per address, <c>Security:AuthFailuresPerSecond</c> permits). A client that has used them up gets 429 for a
/// second, whatever it sends. The check on every request is one comparison while nobody is blocked.
/// </summary>
public sealed class AuthFailureLimiter : IAsyncDisposable
{
    private readonly PartitionedRateLimiter<string> _failures;
    private readonly ConcurrentDictionary<string, long> _blockedUntil = new();
    private long _anyBlockedUntil;

    public AuthFailureLimiter(SecurityOptions options)
    {
        PerSecond = options.AuthFailuresPerSecond;
        _failures = PartitionedRateLimiter.Create<string, string>(client => RateLimitPartition.GetFixedWindowLimiter(client, _ =>
            new FixedWindowRateLimiterOptions { PermitLimit = PerSecond, Window = TimeSpan.FromSeconds(1), QueueLimit = 0, AutoReplenishment = true }));
    }

    public int PerSecond { get; }

    public bool Blocked(HttpContext http)
    {
        var now = Environment.TickCount64;
        if (now >= Interlocked.Read(ref _anyBlockedUntil)) return false;
        var client = Clients.Address(http);
        if (!_blockedUntil.TryGetValue(client, out var until)) return false;
        if (now < until) return true;
        _blockedUntil.TryRemove(KeyValuePair.Create(client, until));
        return false;
    }

    public void Failed(string client)
    {
        using var lease = _failures.AttemptAcquire(client);
        if (lease.IsAcquired && _failures.GetStatistics(client) is not { CurrentAvailablePermits: <= 0 }) return;
        var until = Environment.TickCount64 + 1000;
        _blockedUntil[client] = until;
        long seen;
        while ((seen = Interlocked.Read(ref _anyBlockedUntil)) < until && Interlocked.CompareExchange(ref _anyBlockedUntil, until, seen) != seen) { }
        // Entries of clients that never came back are dropped with the next block.
        foreach (var (c, u) in _blockedUntil)
            if (u <= until - 1000) _blockedUntil.TryRemove(KeyValuePair.Create(c, u));
    }

    public ValueTask DisposeAsync() => _failures.DisposeAsync();
}

public static class Clients
{
    /// <summary>The client as the audit log and the failure limiter see it: its IP address, or <c>unix:pid=N,gid=N</c>.</summary>
    public static string Address(HttpContext http) =>
        http.Features.Get<UnixPeer>()?.Client ?? http.Connection.RemoteIpAddress?.ToString() ?? "unknown";
}
