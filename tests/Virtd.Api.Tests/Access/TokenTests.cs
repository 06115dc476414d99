using System.Net;
using System.Net.Http.Headers;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>Bearer tokens with roles over TCP: creation, use, revocation, expiry, and what the store keeps on disk.</summary>
public sealed class TokenTests
{
    [Fact]
    public async Task NoCredentials_Is401WithWwwAuthenticateBearer_ButHealthReadinessAndTheDocumentStayAnonymous()
    {
        await using var app = new VirtdApplication();
        using var anonymous = app.CreateClient(token: null);

        var r = await anonymous.GetAsync("/api/v1/domains");

        await r.AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
        Assert.Equal("Bearer", r.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Equal("{\"status\":\"ok\"}", await (await anonymous.GetAsync("/healthz")).Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/readyz")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/openapi/v1.json")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/swagger/index.html")).StatusCode);
        // A path no endpoint serves tells an anonymous caller nothing either.
        await (await anonymous.GetAsync("/api/v1/nothing-here")).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
    }

    [Fact]
    public async Task CreatedToken_ShowsItsSecretOnce_WorksWithItsRole_AndRevocationEndsItAtTheNextRequest()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));

        var created = await admin.PostJsonAsync("/api/v1/tokens", new { name = "ci", role = "operator" });
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        Assert.Equal("/api/v1/tokens/ci", created.Headers.Location?.OriginalString);
        var body = await created.ReadJsonAsync();
        var secret = body.Str("secret")!;
        Assert.StartsWith("virtd_", secret);
        Assert.Equal("operator", body.Str("role"));

        var listed = await (await admin.GetAsync("/api/v1/tokens")).Content.ReadAsStringAsync();
        Assert.Contains("\"ci\"", listed);
        Assert.DoesNotContain(secret, listed);
        Assert.DoesNotContain("secret", listed);

        using var ci = app.CreateClient(secret);
        Assert.Equal("succeeded", (await ci.ActAsync("vm", "start", wait: 10)).Str("state"));
        var who = await (await ci.GetAsync("/api/v1/session")).ReadJsonAsync();
        Assert.Equal("ci", who.Str("identity"));
        Assert.Equal("token", who.Str("method"));
        var used = await (await admin.GetAsync("/api/v1/tokens/ci")).ReadJsonAsync();
        Assert.NotNull(used.Str("lastUsedAt"));

        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync("/api/v1/tokens/ci")).StatusCode);
        await (await ci.GetAsync("/api/v1/domains")).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
        await (await admin.DeleteAsync("/api/v1/tokens/ci")).AssertProblemAsync(HttpStatusCode.NotFound, "token-not-found");
    }

    [Theory]
    [InlineData("reader", "POST", "/api/v1/domains/vm/start", "operator")]
    [InlineData("reader", "DELETE", "/api/v1/domains/vm", "admin")]
    [InlineData("operator", "POST", "/api/v1/domains", "admin")]
    [InlineData("operator", "PUT", "/api/v1/domains/vm", "admin")]
    [InlineData("operator", "GET", "/api/v1/tokens", "admin")]
    public async Task RoleTooLow_Is403NamingTheRoleNeeded_AndChangesNothing(string role, string method, string path, string needed)
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));
        var secret = await CreateTokenAsync(admin, "t", role);
        using var client = app.CreateClient(secret);

        var r = await client.SendAsync(new HttpRequestMessage(new HttpMethod(method), path)
        {
            Content = method is "POST" or "PUT" ? Raw("{\"name\":\"vm\",\"memoryMiB\":128}") : null,
        });

        var p = await r.AssertProblemAsync(HttpStatusCode.Forbidden, "forbidden");
        Assert.Contains($"needs the {needed} role", p.Str("detail"));
        Assert.Contains($"t has {role}", p.Str("detail"));
        var vm = await admin.GetDomainAsync("vm");
        Assert.Equal("shut-off", vm.Str("state"));
        Assert.Equal(64, vm.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public async Task ReaderToken_ReadsDomainsJobsHostAndEvents()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));
        var job = await admin.ActAsync("vm", "start", wait: 10);
        using var reader = app.CreateClient(await CreateTokenAsync(admin, "dash", "reader"));

        foreach (var path in new[] { "/api/v1/domains", "/api/v1/domains/vm", "/api/v1/domains/vm/gate", "/api/v1/jobs", $"/api/v1/jobs/{job.Id()}", "/api/v1/host" })
            Assert.True((await reader.GetAsync(path)).StatusCode == HttpStatusCode.OK, path);
        using var events = await reader.GetAsync("/api/v1/events", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, events.StatusCode);
    }

    [Fact]
    public async Task ExpiredToken_Is401SayingItExpired()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        var r = await admin.PostJsonAsync("/api/v1/tokens", new { name = "brief", role = "reader", expiresAt = DateTimeOffset.UtcNow.AddSeconds(1) });
        using var brief = app.CreateClient((await r.ReadJsonAsync()).Str("secret"));

        var refused = await PollAsync(async () =>
        {
            var x = await brief.GetAsync("/api/v1/host");
            return Parse($"{{\"status\":{(int)x.StatusCode},\"body\":{(x.StatusCode == HttpStatusCode.OK ? "null" : await x.Content.ReadAsStringAsync())}}}");
        }, x => x.GetProperty("status").GetInt32() == 401, "the token to expire");

        Assert.Contains("expired", refused.GetProperty("body").Str("detail"));
        Assert.True((await (await admin.GetAsync("/api/v1/tokens/brief")).ReadJsonAsync()).GetProperty("expired").GetBoolean());
    }

    [Theory]
    [InlineData("{\"name\":\"ok\",\"role\":\"root\"}", "role")]
    [InlineData("{\"name\":\"ok\"}", "role")]
    [InlineData("{\"role\":\"reader\"}", "name")]
    [InlineData("{\"name\":\"a/b\",\"role\":\"reader\"}", "name")]
    [InlineData("{\"name\":\"ok\",\"role\":\"reader\",\"expiresAt\":\"2001-01-01T00:00:00Z\"}", "expiresAt")]
    [InlineData("{\"name\":\"ok\",\"role\":\"reader\",\"secret\":\"mine\"}", "secret")]
    public async Task CreateToken_BadBody_Is400NamingTheField_AndCreatesNothing(string body, string field)
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();

        var r = await admin.PostAsync("/api/v1/tokens", Raw(body));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains(field, p.FieldErrors().Keys);
        Assert.Equal(1, (await (await admin.GetAsync("/api/v1/tokens")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task CreateToken_NameTaken_Is409TokenExists_AndTheFirstKeepsWorking()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        var first = await CreateTokenAsync(admin, "ci", "reader");

        var r = await admin.PostJsonAsync("/api/v1/tokens", new { name = "ci", role = "admin" });

        await r.AssertProblemAsync(HttpStatusCode.Conflict, "token-exists");
        using var ci = app.CreateClient(first);
        Assert.Equal("reader", (await (await ci.GetAsync("/api/v1/session")).ReadJsonAsync()).Str("role"));
    }

    [Fact]
    public async Task FirstStart_WritesTheInitialAdminSecretOwnerOnly_ARestartKeepsIt_AndOnlyHashesAreStored()
    {
        var state = TestDirectories.Create("virtd-tokens-");
        string secret, created;
        await using (var app = new VirtdApplication(state))
        {
            using var admin = app.CreateClient();
            secret = app.AdminToken;
            created = await CreateTokenAsync(admin, "ci", "operator");
        }
        var tokenFile = Path.Combine(state, "tokens.json");
        var secretFile = Path.Combine(state, "initial-admin-token");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(tokenFile));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(secretFile));
        var stored = await File.ReadAllTextAsync(tokenFile);
        Assert.DoesNotContain(secret, stored);
        Assert.DoesNotContain(created, stored);
        Assert.Contains("sha256:", stored);

        await using var again = new VirtdApplication(state);
        using var client = again.CreateClient();
        Assert.Equal(secret, again.AdminToken);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/api/v1/host")).StatusCode);
        using var ci = again.CreateClient(created);
        Assert.Equal("ci", (await (await ci.GetAsync("/api/v1/session")).ReadJsonAsync()).Str("identity"));
    }

    [Fact]
    public async Task TokenLookup_DoesNotReadTheDisk_ARequestStillAuthenticatesWithTheFileGone()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.GetAsync("/healthz");
        File.Delete(Path.Combine(app.StateDirectory, "tokens.json"));

        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("/api/v1/domains")).StatusCode);
    }

    [Fact]
    public async Task RevokingTheInitialAdmin_RemovesItsSecretFile()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        using var other = app.CreateClient(await CreateTokenAsync(admin, "root2", "admin"));

        Assert.Equal(HttpStatusCode.NoContent, (await other.DeleteAsync("/api/v1/tokens/initial-admin")).StatusCode);

        Assert.False(File.Exists(Path.Combine(app.StateDirectory, "initial-admin-token")));
        await (await admin.GetAsync("/api/v1/host")).AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
    }

    [Fact]
    public async Task FailedAuthentications_AfterTenInASecond_Get429WithRetryAfter_EvenWithAGoodToken()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        using var guesser = app.CreateClient("virtd_not-a-token");

        var statuses = new List<HttpStatusCode>();
        HttpResponseMessage? last = null;
        for (var i = 0; i < 11; i++)
        {
            last = await guesser.GetAsync("/api/v1/domains");
            statuses.Add(last.StatusCode);
        }
        // The same address with the right token, within the same second.
        var good = await admin.GetAsync("/api/v1/domains");

        Assert.Equal(Enumerable.Repeat(HttpStatusCode.Unauthorized, 10), statuses.Take(10));
        await last!.AssertProblemAsync(HttpStatusCode.TooManyRequests, "rate-limited");
        Assert.NotNull(last!.Headers.RetryAfter);
        Assert.Contains(good.StatusCode, new[] { HttpStatusCode.TooManyRequests, HttpStatusCode.OK });
        // Once the second is over, the right token works again.
        await PollAsync(async () => Parse($"{(int)(await admin.GetAsync("/api/v1/domains")).StatusCode}"), s => s.GetInt32() == 200, "the block to end");
    }

    [Theory]
    [InlineData("Basic YWRtaW46YWRtaW4=")]
    [InlineData("Bearer")]
    [InlineData("Bearer virtd_AAAA")]
    public async Task MalformedOrForeignAuthorization_Is401InvalidToken(string header)
    {
        await using var app = new VirtdApplication();
        using var client = app.CreateClient(token: null);
        client.DefaultRequestHeaders.TryAddWithoutValidation("Authorization", header);

        var r = await client.GetAsync("/api/v1/host");

        await r.AssertProblemAsync(HttpStatusCode.Unauthorized, "unauthenticated");
        Assert.Contains("invalid_token", r.Headers.WwwAuthenticate.ToString());
    }

    internal static async Task<string> CreateTokenAsync(HttpClient admin, string name, string role)
    {
        var r = await admin.PostJsonAsync("/api/v1/tokens", new { name, role });
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.Created, $"token {name}: {(int)r.StatusCode} {body}");
        return Parse(body).Str("secret")!;
    }
}
