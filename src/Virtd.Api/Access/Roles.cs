using System.Security.Claims;
using System.Text.Json.Serialization;

namespace Virtd.Api.Access;

/// <summary>What a caller may do. Each role includes the ones below it: reader &lt; operator &lt; admin.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<Role>))]
public enum Role
{
    /// <summary>Reads: domains, jobs, host, the event stream.</summary>
    [JsonStringEnumMemberName("reader")] Reader = 1,

    /// <summary>A reader who may also act on domains (start, stop, ...) and cancel jobs.</summary>
    [JsonStringEnumMemberName("operator")] Operator = 2,

    /// <summary>Everything: define, update and undefine domains, manage tokens.</summary>
    [JsonStringEnumMemberName("admin")] Admin = 3,
}

/// <summary>How a caller proved who it is.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<AuthMethod>))]
public enum AuthMethod
{
    /// <summary>Connected to one of the daemon's Unix sockets: the socket gives the role, the peer's uid the identity.</summary>
    [JsonStringEnumMemberName("unix-socket")] UnixSocket,

    /// <summary><c>Authorization: Bearer</c> with an API token.</summary>
    [JsonStringEnumMemberName("token")] Token,

    /// <summary>The dashboard's session cookie, made from a token by <c>POST /api/v1/session</c>.</summary>
    [JsonStringEnumMemberName("session")] Session,
}

/// <summary>
/// Who is calling: <paramref name="Identity"/> is the token's name, or <c>unix:uid=N</c> on a Unix socket; it is
/// what the audit log and the logs name. One instance per token, session or socket connection, reused by every request.
/// </summary>
public sealed record Caller(string Identity, Role Role, AuthMethod Method, DateTimeOffset? ExpiresAt = null)
{
    /// <summary>The same caller as ASP.NET Core's user, made once.</summary>
    public CallerPrincipal Principal => field ??= new CallerPrincipal(this);
}

/// <summary>An authenticated caller as a <see cref="ClaimsPrincipal"/>: authorization reads <see cref="Caller"/> directly.</summary>
public sealed class CallerPrincipal(Caller caller)
    : ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.Name, caller.Identity), new Claim(ClaimTypes.Role, RoleText.Of(caller.Role))], VirtdAuthentication.SchemeName))
{
    public Caller Caller { get; } = caller;
}

public static class RoleText
{
    public static string Of(Role role) => role switch
    {
        Role.Reader => "reader",
        Role.Operator => "operator",
        _ => "admin",
    };
}
