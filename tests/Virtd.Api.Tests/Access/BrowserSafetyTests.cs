using System.Net;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>The dashboard's session cookie, and what keeps other web pages from using it: CSRF checks, Host, CORS.</summary>
public sealed class BrowserSafetyTests
{
    [Fact]
    public async Task SignIn_SetsAnHttpOnlyStrictCookie_ThatAuthenticatesReadsAndJsonChanges_UntilSignOut()
    {
        await using var app = new VirtdApplication();
        using var browser = app.CreateClient(token: null);

        var login = await browser.PostJsonAsync("/api/v1/session", new { token = app.AdminToken });

        Assert.Equal(HttpStatusCode.NoContent, login.StatusCode);
        var setCookie = login.Headers.GetValues("Set-Cookie").Single();
        Assert.StartsWith("virtd_session=", setCookie);
        Assert.Contains("httponly", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("secure", setCookie, StringComparison.OrdinalIgnoreCase); // plain HTTP on loopback
        Assert.DoesNotContain(app.AdminToken, setCookie);
        var cookie = setCookie.Split(';')[0];

        using var session = app.CreateClient(token: null);
        session.DefaultRequestHeaders.Add("Cookie", cookie);
        Assert.Equal("session", (await (await session.GetAsync("/api/v1/session")).ReadJsonAsync()).Str("method"));
        var defined = await session.PostAsync("/api/v1/domains", Raw("{\"name\":\"from-browser\",\"memoryMiB\":64}"));
        Assert.Equal(HttpStatusCode.Created, defined.StatusCode);

        var logout = await session.DeleteAsync("/api/v1/session");
        Assert.Equal(HttpStatusCode.NoContent, logout.StatusCode);
        Assert.Contains("virtd_session=;", logout.Headers.GetValues("Set-Cookie").Single());
        await (await session.GetAsync("/api/v1/domains")).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
    }

    [Theory]
    [InlineData("text/plain", null)]
    [InlineData("application/x-www-form-urlencoded", null)]
    [InlineData(null, null)]
    [InlineData("application/json", "http://evil.example")]
    [InlineData("application/json", "null")]
    public async Task CookieAuthenticatedChange_WithoutJsonOrFromAForeignOrigin_Is403CsrfRejected_AndChangesNothing(string? contentType, string? origin)
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));
        using var session = await SignedInAsync(app);

        var start = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains/vm/start")
        {
            Content = contentType is null ? null : Raw("{}", contentType),
        };
        if (origin is not null) start.Headers.Add("Origin", origin);
        var r = await session.SendAsync(start);

        await r.AssertProblemAsync(HttpStatusCode.Forbidden, "csrf-rejected");
        Assert.Equal("shut-off", await admin.StateOfAsync("vm"));
        Assert.Equal(0, (await (await admin.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task CookieAuthenticatedChange_FromTheDaemonsOwnOrigin_IsAccepted()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));
        using var session = await SignedInAsync(app);

        var start = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains/vm/start?wait=10") { Content = Raw("") };
        start.Headers.Add("Origin", "http://localhost");
        var r = await session.SendAsync(start);

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("running", await admin.StateOfAsync("vm"));
    }

    [Fact]
    public async Task SignIn_FromAForeignOriginOrWithABadToken_IsRefused()
    {
        await using var app = new VirtdApplication();
        using var browser = app.CreateClient(token: null);

        var foreign = new HttpRequestMessage(HttpMethod.Post, "/api/v1/session") { Content = Raw($"{{\"token\":\"{app.AdminToken}\"}}") };
        foreign.Headers.Add("Origin", "http://evil.example");
        await (await browser.SendAsync(foreign)).AssertProblemAsync(HttpStatusCode.Forbidden, "csrf-rejected");
        await (await browser.PostJsonAsync("/api/v1/session", new { token = "virtd_wrong" })).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
        // A form (what a cross-site page could post) matches no endpoint: closed by default, so 401 without credentials.
        await (await browser.PostAsync("/api/v1/session", Raw($"token={app.AdminToken}", "application/x-www-form-urlencoded")))
            .AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
    }

    [Fact]
    public async Task RevokingTheToken_EndsItsSessions()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        var secret = await TokenTests.CreateTokenAsync(admin, "dash", "reader");
        using var session = await SignedInAsync(app, secret);
        Assert.Equal(HttpStatusCode.OK, (await session.GetAsync("/api/v1/domains")).StatusCode);

        await admin.DeleteAsync("/api/v1/tokens/dash");

        await (await session.GetAsync("/api/v1/domains")).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
    }

    [Theory]
    [InlineData("evil.example")]
    [InlineData("evil.example:8470")]
    [InlineData("localhost.evil.example")]
    public async Task ForeignHost_Is400HostNotAllowed_EvenWithAValidToken(string host)
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();

        var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/domains");
        request.Headers.Host = host;
        var r = await admin.SendAsync(request);

        await r.AssertProblemAsync(HttpStatusCode.BadRequest, "host-not-allowed");
    }

    [Theory]
    [InlineData("localhost", true)]
    [InlineData("127.0.0.1:8470", true)]
    [InlineData("[::1]:8470", true)]
    [InlineData("virt.example.org", true)]
    [InlineData("other.example.org", false)]
    public async Task Hosts_LoopbackNamesAndSecurityHostnames_AreAllowed(string host, bool allowed)
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Security:Hostnames:0"] = "virt.example.org" });
        using var admin = app.CreateClient();

        var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/host");
        request.Headers.Host = host;
        var r = await admin.SendAsync(request);

        Assert.Equal(allowed ? HttpStatusCode.OK : HttpStatusCode.BadRequest, r.StatusCode);
    }

    [Fact]
    public async Task Cors_IsOffByDefault_AndAllowsOnlyTheConfiguredOrigins()
    {
        await using (var app = new VirtdApplication())
        {
            using var http = app.CreateClient();
            var r = await http.SendAsync(Preflight("http://dash.example:8080"));
            Assert.False(r.Headers.Contains("Access-Control-Allow-Origin"));
        }
        await using (var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Security:CorsOrigins:0"] = "http://dash.example:8080" }))
        {
            using var http = app.CreateClient();
            var allowed = await http.SendAsync(Preflight("http://dash.example:8080"));
            Assert.Equal("http://dash.example:8080", allowed.Headers.GetValues("Access-Control-Allow-Origin").Single());
            Assert.False(allowed.Headers.Contains("Access-Control-Allow-Credentials"));
            var other = await http.SendAsync(Preflight("http://evil.example"));
            Assert.False(other.Headers.Contains("Access-Control-Allow-Origin"));
        }
    }

    private static HttpRequestMessage Preflight(string origin)
    {
        var r = new HttpRequestMessage(HttpMethod.Options, "/api/v1/domains");
        r.Headers.Add("Origin", origin);
        r.Headers.Add("Access-Control-Request-Method", "POST");
        r.Headers.Add("Access-Control-Request-Headers", "authorization,content-type");
        return r;
    }

    /// <summary>A client that carries only the session cookie of a sign-in with <paramref name="token"/> (the admin's by default).</summary>
    internal static async Task<HttpClient> SignedInAsync(VirtdApplication app, string? token = null)
    {
        using var browser = app.CreateClient(token: null);
        var login = await browser.PostJsonAsync("/api/v1/session", new { token = token ?? app.AdminToken });
        Assert.Equal(HttpStatusCode.NoContent, login.StatusCode);
        var session = app.CreateClient(token: null);
        session.DefaultRequestHeaders.Add("Cookie", login.Headers.GetValues("Set-Cookie").Single().Split(';')[0]);
        return session;
    }
}
