using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Http.Metadata;
using Virtd.Api.Errors;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>The role an endpoint needs: endpoint metadata, read by the role check, the OpenAPI document and the tests.</summary>
public sealed record RequiredRole(Role Role);

/// <summary>
/// Each endpoint names the role it needs (<see cref="Requires{TBuilder}"/>) or that it is anonymous
/// (<c>AllowAnonymous()</c>); an endpoint that names neither, and a path no endpoint serves, need admin: closed by
/// default. The check reads that metadata directly. ASP.NET Core's authorization middleware did the same with one
/// policy per role, but evaluating a policy cost 4–5 µs of CPU per request, a fifth of a whole domain read.
/// </summary>
public static class AccessPolicies
{
    /// <summary>The role the endpoint needs, and the 401/403/429 answers that come with needing one.</summary>
    public static TBuilder Requires<TBuilder>(this TBuilder builder, Role role) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(new RequiredRole(role),
            Problem(StatusCodes.Status401Unauthorized), Problem(StatusCodes.Status403Forbidden), Problem(StatusCodes.Status429TooManyRequests));

    private static ProducesResponseTypeMetadata Problem(int status) => new(status, typeof(Microsoft.AspNetCore.Mvc.ProblemDetails), ["application/problem+json"]);

    /// <summary>The role an endpoint needs, or null when it is anonymous.</summary>
    public static Role? Needed(Endpoint? endpoint) =>
        endpoint?.Metadata is { } m && m.GetMetadata<IAllowAnonymous>() is not null ? null : endpoint?.Metadata.GetMetadata<RequiredRole>()?.Role ?? Role.Admin;

    /// <summary>
    /// Refuses, as problem+json: 401 <c>unauthenticated</c> (with <c>WWW-Authenticate: Bearer</c>), 429 <c>rate-limited</c>
    /// for an address with too many failed authentications, 403 <c>forbidden</c> naming the role needed, and 403
    /// <c>csrf-rejected</c> for a change made with the session cookie that a browser could have been made to send from
    /// another site. Every refused change gets its audit line.
    /// </summary>
    public static IApplicationBuilder UseRoles(this IApplicationBuilder app) => app.Use((http, next) =>
    {
        if (Needed(http.GetEndpoint()) is not { } needed) return next(http);
        if (http.User is not CallerPrincipal && http.Features.Get<AccessDenied>() is null && Metrics.MetricsApi.MayScrapeAnonymously(http)) return next(http);
        var refusal = http.User is CallerPrincipal p
            ? p.Caller.Role < needed ? AccessErrors.Forbidden(needed, p.Caller) : BrowserSafety.CheckCookieChange(http)
            : http.Features.Get<AccessDenied>()?.Problem ?? AccessErrors.Unauthenticated(
                "this needs credentials: 'Authorization: Bearer <token>' (POST /api/v1/tokens makes tokens), a dashboard session, " +
                "or on the host itself the Unix sockets in the daemon's RunDirectory", invalidCredentials: false);
        return refusal is null ? next(http) : RefuseAsync(http, refusal);
    });

    private static Task RefuseAsync(HttpContext http, VirtdException refusal)
    {
        var services = http.RequestServices;
        if (refusal.Status == 403)
            services.GetRequiredService<ILoggerFactory>().CreateLogger("Virtd.Api.Access").LogInformation(
                "{Identity} ({Client}) refused {Method} {Path}: {Detail}", ((CallerPrincipal)http.User).Caller.Identity,
                Clients.Address(http), http.Request.Method, http.Request.Path, refusal.Detail);
        if (refusal.Status is 401 or 403 && AuditLog.IsChange(http.Request))
            services.GetRequiredService<AuditLog>().TryWrite(AuditLog.Entry(http, refusal.Status, null, null, services.GetRequiredService<TimeProvider>()));
        return ProblemResponses.WriteAsync(http, refusal);
    }
}
