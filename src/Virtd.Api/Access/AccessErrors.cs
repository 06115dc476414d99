using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>The problems access control answers with, each code with its status in one place.</summary>
public static class AccessErrors
{
    /// <param name="invalidCredentials">Credentials were sent but are not good (RFC 6750's <c>error="invalid_token"</c>).</param>
    public static VirtdException Unauthenticated(string detail, bool invalidCredentials = true) =>
        new(ErrorCodes.Unauthenticated, 401, "Unauthenticated", detail)
        {
            Challenge = invalidCredentials ? "Bearer realm=\"virtd\", error=\"invalid_token\"" : "Bearer realm=\"virtd\"",
        };

    public static VirtdException Forbidden(Role needed, Caller caller) =>
        new(ErrorCodes.Forbidden, 403, "Forbidden",
            $"this needs the {RoleText.Of(needed)} role; {caller.Identity} has {RoleText.Of(caller.Role)}");

    public static VirtdException CsrfRejected(string detail) =>
        new(ErrorCodes.CsrfRejected, 403, "Cross-site request refused", detail);

    public static VirtdException TooManyFailures(int perSecond) =>
        new(ErrorCodes.RateLimited, 429, "Too many failed authentications",
            $"more than {perSecond} failed authentications from this address within a second (Security:AuthFailuresPerSecond); try again shortly")
        { RetryAfterSeconds = 1 };

    public static VirtdException HostNotAllowed(string host) =>
        new(ErrorCodes.HostNotAllowed, 400, "Host not allowed",
            $"the Host header '{host}' is not one of this daemon's names; add it to Security:Hostnames (or AllowedHosts)");

    public static VirtdException TokenExists(string name) =>
        new(ErrorCodes.TokenExists, 409, "Token exists", $"a token named '{name}' already exists; revoke it first or choose another name");

    public static VirtdException TokenNotFound(string name) =>
        new(ErrorCodes.TokenNotFound, 404, "Token not found", $"no token named '{name}'");

    public static VirtdException AuditUnavailable(string reason) =>
        new(ErrorCodes.AuditUnavailable, 503, "Audit log unavailable",
            $"the change was not made because its audit line could not be written: {reason}")
        { RetryAfterSeconds = 5 };
}
