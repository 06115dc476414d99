using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.AspNetCore.Http.Metadata;
using Virtd.Api.Errors;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>The role an endpoint needs: endpoint metadata, read by authorization, the OpenAPI document and the tests.</summary>
public sealed record RequiredRole(Role Role);

/// <summary>At least this role.</summary>
public sealed record RoleRequirement(Role Role) : IAuthorizationRequirement;

public sealed class RoleRequirementHandler : AuthorizationHandler<RoleRequirement>
{
    protected override Task HandleRequirementAsync(AuthorizationHandlerContext context, RoleRequirement requirement)
    {
        if (context.User is CallerPrincipal p && p.Caller.Role >= requirement.Role) context.Succeed(requirement);
        return Task.CompletedTask;
    }
}

public static class AccessPolicies
{
    public static string Name(Role role) => RoleText.Of(role);

    public static AuthorizationPolicy For(Role role) =>
        new AuthorizationPolicyBuilder(VirtdAuthentication.SchemeName).RequireAuthenticatedUser().AddRequirements(new RoleRequirement(role)).Build();

    /// <summary>The role the endpoint needs: its authorization policy and the metadata the OpenAPI document and tests read.</summary>
    public static TBuilder Requires<TBuilder>(this TBuilder builder, Role role) where TBuilder : IEndpointConventionBuilder =>
        builder.RequireAuthorization(Name(role)).WithMetadata(new RequiredRole(role),
            Problem(StatusCodes.Status401Unauthorized), Problem(StatusCodes.Status403Forbidden), Problem(StatusCodes.Status429TooManyRequests));

    private static ProducesResponseTypeMetadata Problem(int status) => new(status, typeof(Microsoft.AspNetCore.Mvc.ProblemDetails), ["application/problem+json"]);
}

/// <summary>
/// Answers what authorization refused, as problem+json: 401 <c>unauthenticated</c> (with <c>WWW-Authenticate:
/// Bearer</c>), 429 <c>rate-limited</c> for an address with too many failures, 403 <c>forbidden</c> naming the role
/// needed, and 403 <c>csrf-rejected</c> for a cookie-authenticated change that a browser could have been made to
/// send from another site. Every refused change gets its audit line.
/// </summary>
public sealed class AccessResultHandler(AuditLog audit, TimeProvider time) : IAuthorizationMiddlewareResultHandler
{
    public async Task HandleAsync(RequestDelegate next, HttpContext http, AuthorizationPolicy policy, PolicyAuthorizationResult result)
    {
        VirtdException? refusal = null;
        if (result.Challenged)
        {
            var auth = await http.AuthenticateAsync(VirtdAuthentication.SchemeName).ConfigureAwait(false);
            refusal = (auth.Failure as AccessDenied)?.Problem ?? AccessErrors.Unauthenticated(
                "this needs credentials: 'Authorization: Bearer <token>' (POST /api/v1/tokens makes tokens), a dashboard session, " +
                "or on the host itself the Unix sockets in the daemon's RunDirectory", invalidCredentials: false);
        }
        else if (result.Forbidden && http.User is CallerPrincipal p)
        {
            var needed = policy.Requirements.OfType<RoleRequirement>().Select(r => r.Role).DefaultIfEmpty(Role.Admin).Max();
            refusal = AccessErrors.Forbidden(needed, p.Caller);
        }
        else if (result.Succeeded)
        {
            refusal = BrowserSafety.CheckCookieChange(http);
        }
        else
        {
            refusal = AccessErrors.Unauthenticated("not authorised", invalidCredentials: false);
        }
        if (refusal is null)
        {
            await next(http).ConfigureAwait(false);
            return;
        }
        if (refusal.Status is 401 or 403 && AuditLog.IsChange(http.Request))
            audit.TryWrite(AuditLog.Entry(http, refusal.Status, null, null, time));
        await ProblemResponses.WriteAsync(http, refusal).ConfigureAwait(false);
    }
}
