using System.Collections.Concurrent;
using System.Text.Encodings.Web;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Authentication;
using Microsoft.Extensions.Options;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>
/// Who is calling, from the first of: the Unix socket the request came in on (its role, the peer's uid); an
/// <c>Authorization: Bearer</c> token; the dashboard's session cookie. No credentials is no result (the endpoint's
/// policy then answers 401); wrong ones fail, count against the client's address and are logged at warning.
/// </summary>
public sealed class VirtdAuthentication(
    IOptionsMonitor<AuthenticationSchemeOptions> options,
    ILoggerFactory logs,
    UrlEncoder encoder,
    TokenStore tokens,
    AuthFailureLimiter limiter) : AuthenticationHandler<AuthenticationSchemeOptions>(options, logs, encoder)
{
    public const string SchemeName = "virtd";
    public const string SessionCookie = "virtd_session";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync() => Task.FromResult(Authenticate());

    private AuthenticateResult Authenticate()
    {
        if (Context.Features.Get<UnixPeer>() is { } peer) return Success(peer.Caller);

        var authorization = Request.Headers.Authorization;
        var cookie = authorization.Count == 0 ? Request.Cookies[SessionCookie] : null;
        if (authorization.Count == 0 && cookie is null) return AuthenticateResult.NoResult();

        var client = Clients.Address(Context);
        if (limiter.Blocked(client)) return AuthenticateResult.Fail(new AccessDenied(AccessErrors.TooManyFailures(limiter.PerSecond)));

        string? problem;
        if (authorization.Count > 0)
        {
            var value = authorization.ToString().AsSpan().Trim();
            if (value.Length > 7 && value.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
            {
                var check = tokens.CheckToken(value[7..].Trim(), out var token);
                if (check == SecretCheck.Valid) return Success(token!.Caller);
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
            if (check == SecretCheck.Valid)
            {
                Context.Features.Set(session);
                return Success(session!.Caller);
            }
            problem = check == SecretCheck.Expired ? "the session has expired; sign in again" : "the session is not valid (signed out, or its token was revoked); sign in again";
        }
        limiter.Failed(client);
        Logger.LogWarning("authentication failed from {Client} on {Method} {Path}: {Problem}", client, Request.Method, Request.Path, problem);
        return AuthenticateResult.Fail(new AccessDenied(AccessErrors.Unauthenticated(problem)));
    }

    private static AuthenticateResult Success(Caller caller) => AuthenticateResult.Success(new AuthenticationTicket(caller.Principal, SchemeName));
}

/// <summary>Why authentication failed, as the problem the client gets.</summary>
public sealed class AccessDenied(VirtdException problem) : Exception(problem.Detail)
{
    public VirtdException Problem { get; } = problem;
}

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

    public bool Blocked(string client)
    {
        var now = Environment.TickCount64;
        if (now >= Interlocked.Read(ref _anyBlockedUntil)) return false;
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
