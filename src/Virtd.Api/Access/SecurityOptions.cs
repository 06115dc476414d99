namespace Virtd.Api.Access;

/// <summary>Configuration section <c>Security</c>: who may reach the daemon over TCP, and from where.</summary>
public sealed class SecurityOptions
{
    /// <summary>
    /// Allow an <c>http://</c> listen address that is not loopback. Off: such a URL in <c>urls</c> stops the daemon
    /// at start (exit code 2), because tokens and session cookies would cross the network in clear text.
    /// </summary>
    public bool AllowPlainHttpOnNetwork { get; set; }

    /// <summary>Host names (and addresses) clients use to reach the daemon, besides the loopback names; added to <c>AllowedHosts</c>.</summary>
    public List<string> Hostnames { get; set; } = [];

    /// <summary>Origins (<c>https://dash.example:8443</c>) whose pages may call the API with a bearer token (CORS). None by default.</summary>
    public List<string> CorsOrigins { get; set; } = [];

    /// <summary>Failed authentications one client address may make per second; beyond them it gets 429 until the second is over.</summary>
    public int AuthFailuresPerSecond { get; set; } = 10;

    /// <summary>How long a dashboard session lasts (never beyond its token's expiry).</summary>
    public TimeSpan SessionLifetime { get; set; } = TimeSpan.FromHours(12);

    /// <summary>The audit log; default <c>&lt;StateDirectory&gt;/log/audit.log</c>.</summary>
    public string? AuditLog { get; set; }

    public List<string> Validate()
    {
        var errors = new List<string>();
        void Check(bool ok, string key, string message) { if (!ok) errors.Add($"{key}: {message}"); }
        for (var i = 0; i < Hostnames.Count; i++)
            Check(!string.IsNullOrWhiteSpace(Hostnames[i]) && !Hostnames[i].Contains('/') && !Hostnames[i].Contains(' '), $"Security:Hostnames:{i}", "must be a host name or address");
        for (var i = 0; i < CorsOrigins.Count; i++)
            Check(Uri.TryCreate(CorsOrigins[i], UriKind.Absolute, out var u) && u.Scheme is "http" or "https" && u.AbsolutePath == "/" && !CorsOrigins[i].EndsWith('/'),
                $"Security:CorsOrigins:{i}", "must be an origin: scheme://host[:port], without a path");
        Check(AuthFailuresPerSecond is >= 1 and <= 1_000_000, "Security:AuthFailuresPerSecond", "must be between 1 and 1000000");
        Check(SessionLifetime >= TimeSpan.FromMinutes(1) && SessionLifetime <= TimeSpan.FromDays(30), "Security:SessionLifetime", "must be between 00:01:00 and 30.00:00:00");
        Check(AuditLog is null || Path.IsPathRooted(AuditLog), "Security:AuditLog", "must be an absolute path");
        return errors;
    }
}

/// <summary>Configuration section <c>Listen</c>.</summary>
public sealed class ListenerOptions
{
    /// <summary>Serve the API on <c>&lt;RunDirectory&gt;/virtd.sock</c> (admin) and <c>virtd-ro.sock</c> (reader).</summary>
    public bool UnixSockets { get; set; } = true;
}
