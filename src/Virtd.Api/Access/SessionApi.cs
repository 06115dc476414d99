using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Domains;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>Body of <c>POST /api/v1/session</c>.</summary>
public sealed record SessionRequest
{
    /// <summary>An API token's secret; the session stands for that token.</summary>
    public string? Token { get; init; }
}

/// <summary>Who the caller is, and how it proved it.</summary>
public sealed record SessionDto(string Identity, Role Role, AuthMethod Method, DateTimeOffset? ExpiresAt);

/// <summary>
/// The dashboard's sign-in: a token becomes an HttpOnly, SameSite=Strict cookie (Secure over HTTPS) that the page and
/// its EventSource send by themselves, so the token is never kept by the page's script.
/// </summary>
public static class SessionApi
{
    public static IEndpointRouteBuilder MapSessionApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/session").WithTags("Access");
        g.MapPost("", SignIn).WithName("SignIn")
            .WithSummary("Sign in with a token: sets the session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS)")
            .AllowAnonymous().Audited(204).Problems(400, 401, 403, 413, 415, 429, 503);
        g.MapGet("", WhoAmI).WithName("WhoAmI").WithSummary("Who the caller is: identity, role, how it authenticated, until when")
            .Requires(Role.Reader);
        g.MapDelete("", SignOut).WithName("SignOut").WithSummary("Sign out: ends the session and clears its cookie")
            .AllowAnonymous().Audited(204).Problems(403, 503);
        return app;
    }

    public static NoContent SignIn(SessionRequest request, HttpContext http, TokenStore tokens, AuthFailureLimiter limiter,
        SecurityOptions security, ILogger<TokenStore> log)
    {
        if (BrowserSafety.CheckOrigin(http) is { } foreign) throw foreign;
        if (string.IsNullOrEmpty(request.Token)) throw VirtdException.Validation("token", "is required: an API token's secret");
        if (limiter.Blocked(http)) throw AccessErrors.TooManyFailures(limiter.PerSecond);
        var client = Clients.Address(http);
        var check = tokens.CheckToken(request.Token, out var token);
        if (check != SecretCheck.Valid)
        {
            limiter.Failed(client);
            log.LogWarning("sign-in failed from {Client}: {Problem}", client, check == SecretCheck.Expired ? "expired token" : "unknown token");
            throw AccessErrors.Unauthenticated(check == SecretCheck.Expired ? "the token has expired" : "the token is not valid (unknown or revoked)");
        }
        http.User = token!.Caller.Principal; // the audit line names who signed in
        Audit.Of(http).Write();
        var (session, secret) = tokens.CreateSession(token, security.SessionLifetime);
        http.Response.Cookies.Append(VirtdAuthentication.SessionCookie, secret, Cookie(http, session.ExpiresAt));
        return TypedResults.NoContent();
    }

    public static Ok<SessionDto> WhoAmI(HttpContext http)
    {
        var caller = ((CallerPrincipal)http.User).Caller;
        return TypedResults.Ok(new SessionDto(caller.Identity, caller.Role, caller.Method, caller.ExpiresAt));
    }

    public static NoContent SignOut(HttpContext http, TokenStore tokens)
    {
        if (BrowserSafety.CheckOrigin(http) is { } foreign) throw foreign;
        var cookie = http.Request.Cookies[VirtdAuthentication.SessionCookie];
        if (cookie is not null && tokens.CheckSession(cookie, out var session) == SecretCheck.Valid)
        {
            http.User = session!.Caller.Principal;
            Audit.Of(http).Write();
            tokens.EndSession(session);
        }
        http.Response.Cookies.Delete(VirtdAuthentication.SessionCookie, Cookie(http, null));
        return TypedResults.NoContent();
    }

    private static CookieOptions Cookie(HttpContext http, DateTimeOffset? expires) => new()
    {
        HttpOnly = true,
        SameSite = SameSiteMode.Strict,
        Secure = http.Request.IsHttps,
        Path = "/",
        Expires = expires,
        IsEssential = true,
    };
}
