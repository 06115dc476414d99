using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Virtd.Api.Access;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>
/// Every route the daemon serves, as its endpoint data source lists them (no hand-written list), against every kind
/// of caller, over real TCP: the answer is the one its role and its OpenAPI operation document, never a 5xx.
/// </summary>
public sealed class AccessMatrixTests
{
    private static readonly string[] Callers = ["none", "revoked", "expired", "reader", "operator", "admin"];

    [Fact]
    public async Task EveryRoute_ForEveryCaller_GetsItsDocumentedAnswer()
    {
        await using var app = new VirtdApplication(kestrel: true,
            settings: new Dictionary<string, string?> { ["Security:AuthFailuresPerSecond"] = "1000000" });
        var address = app.StartKestrel();
        using var admin = Client(address, app.AdminToken);
        var document = JsonDocument.Parse(await admin.GetStringAsync("/openapi/v1.json")).RootElement;

        // The routes, from the endpoint data source; the OpenAPI document must list exactly these, with the same roles.
        var routes = app.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .Where(e => e.Metadata.GetMetadata<IExcludeFromDescriptionMetadata>() is not { ExcludeFromDescription: true })
            .SelectMany(e => e.Metadata.GetMetadata<IHttpMethodMetadata>()!.HttpMethods.Select(m =>
                (Method: m, Path: "/" + e.RoutePattern.RawText!.Trim('/'), Role: AccessPolicies.Needed(e))))
            .OrderBy(r => r.Path, StringComparer.Ordinal).ThenBy(r => r.Method, StringComparer.Ordinal).ToList();
        var documented = document.GetProperty("paths").EnumerateObject()
            .SelectMany(p => p.Value.EnumerateObject().Select(o => (Method: o.Name.ToUpperInvariant(), Path: p.Name,
                Role: o.Value.TryGetProperty("x-virtd-role", out var r) ? r.GetString() : null)))
            .OrderBy(r => r.Path, StringComparer.Ordinal).ThenBy(r => r.Method, StringComparer.Ordinal).ToList();
        Assert.Equal(routes.Select(r => (r.Method, r.Path, r.Role is { } role ? RoleText.Of(role) : null)), documented);
        Assert.True(routes.Count >= 20, $"only {routes.Count} routes");
        Assert.Contains(("GET", "/metrics", (Role?)Role.Reader), routes);
        Assert.Contains(("GET", "/api/v1/domains/{id}/stats", (Role?)Role.Reader), routes);

        // Callers: anonymous, a revoked token, an expired one, and one of each role.
        var secrets = new Dictionary<string, string?> { ["none"] = null, ["admin"] = app.AdminToken };
        foreach (var role in new[] { "reader", "operator" }) secrets[role] = await TokenTests.CreateTokenAsync(admin, role, role);
        secrets["revoked"] = await TokenTests.CreateTokenAsync(admin, "revoked", "admin");
        await admin.DeleteAsync("/api/v1/tokens/revoked");
        var expiring = await admin.PostJsonAsync("/api/v1/tokens", new { name = "expired", role = "admin", expiresAt = DateTimeOffset.UtcNow.AddSeconds(1) });
        secrets["expired"] = (await expiring.ReadJsonAsync()).Str("secret");
        using (var probe = Client(address, secrets["expired"]))
            await PollAsync(async () => Parse($"{(int)(await probe.GetAsync("/api/v1/host")).StatusCode}"), s => s.GetInt32() == 401, "the token to expire");

        var counts = new Dictionary<string, int>();
        var n = 0;
        foreach (var route in routes)
        {
            var responses = document.GetProperty("paths").GetProperty(route.Path).GetProperty(route.Method.ToLowerInvariant()).GetProperty("responses")
                .EnumerateObject().Select(r => int.Parse(r.Name)).ToHashSet();
            foreach (var caller in Callers)
            {
                var fixtures = await FixturesAsync(admin);
                using var client = Client(address, secrets[caller]);
                var request = new HttpRequestMessage(new HttpMethod(route.Method), Fill(route.Path, fixtures)) { Content = Body(route.Method, route.Path, ++n, app.AdminToken) };
                using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                var status = (int)response.StatusCode;
                // An event stream never ends: only its headers are read.
                var body = response.Content.Headers.ContentType?.MediaType == "text/event-stream" ? "" : await response.Content.ReadAsStringAsync();
                // A console is a WebSocket: a plain GET is told so (400 websocket-required), documented like any answer.
                var what = $"{caller} {route.Method} {route.Path} → {status}: {body}";
                var expected = route.Role switch
                {
                    null => null,
                    _ when caller is "none" or "revoked" or "expired" => 401,
                    { } needed when Enum.Parse<Role>(caller, ignoreCase: true) < needed => 403,
                    _ => (int?)null,
                };
                if (expected is { } e) Assert.True(status == e, $"expected {e}: {what}");
                else Assert.True(status is not (401 or 403) && responses.Contains(status), $"not a documented answer ({string.Join(", ", responses)}): {what}");
                Assert.True(status < 500, what);
                if (status >= 400)
                {
                    Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
                    Assert.False(string.IsNullOrEmpty(Parse(body).Str("code")), what);
                }
                counts[$"{status}"] = counts.GetValueOrDefault($"{status}") + 1;
            }
        }
        Console.WriteLine($"access matrix: {routes.Count} routes × {Callers.Length} callers = {n} requests; statuses: " +
                          string.Join(", ", counts.OrderBy(c => c.Key).Select(c => $"{c.Key}×{c.Value}")));
        Assert.Equal(routes.Count * Callers.Length, n);
    }

    private sealed record Fixtures(string Domain, string JobId, string TokenName);

    /// <summary>What the route parameters name, made again before each request (an earlier one may have removed it).</summary>
    private static async Task<Fixtures> FixturesAsync(HttpClient admin)
    {
        if ((await admin.GetAsync("/api/v1/domains/m")).StatusCode == HttpStatusCode.NotFound) await admin.DefineAsync(Definition("m"));
        if ((await admin.GetAsync("/api/v1/tokens/victim")).StatusCode == HttpStatusCode.NotFound) await TokenTests.CreateTokenAsync(admin, "victim", "reader");
        if ((await admin.GetAsync("/api/v1/pools/default/volumes/v")).StatusCode == HttpStatusCode.NotFound)
            (await admin.PostJsonAsync("/api/v1/pools/default/volumes", new { name = "v", format = "raw", capacity = "1MiB" })).EnsureSuccessStatusCode();
        var jobs = await (await admin.GetAsync("/api/v1/jobs?limit=1")).ReadJsonAsync();
        var jobId = jobs.GetProperty("count").GetInt32() > 0 ? jobs.GetProperty("items")[0].Id() : (await admin.ActAsync("m", "start", wait: 10)).Id();
        return new Fixtures("m", jobId, "victim");
    }

    private static string Fill(string path, Fixtures f) =>
        path.Replace("{id}", f.Domain).Replace("{jobId}", f.JobId).Replace("{name}", f.TokenName).Replace("{pool}", "default").Replace("{volume}", "v");

    private static HttpContent? Body(string method, string path, int n, string adminToken) => (method, path) switch
    {
        ("POST", "/api/v1/domains") => Raw($"{{\"name\":\"mx{n}\",\"memoryMiB\":64}}"),
        ("PUT", "/api/v1/domains/{id}") => Raw("{\"name\":\"m\",\"memoryMiB\":64}"),
        ("POST", "/api/v1/tokens") => Raw($"{{\"name\":\"tx{n}\",\"role\":\"reader\"}}"),
        ("POST", "/api/v1/session") => Raw($"{{\"token\":\"{adminToken}\"}}"),
        ("POST", "/api/v1/domains/{id}/shutdown") => Raw("{\"timeout\":1}"),
        ("POST", "/api/v1/domains/{id}/destroy") => Raw("{\"timeout\":1}"),
        ("POST", "/api/v1/pools/{pool}/volumes") => Raw($"{{\"name\":\"vx{n}\",\"format\":\"raw\",\"capacity\":\"1MiB\"}}"),
        ("POST", "/api/v1/pools/{pool}/volumes/{volume}/resize") => Raw("{\"capacity\":\"2MiB\"}"),
        ("PUT", "/api/v1/pools/{pool}/volumes/{volume}/content") => new ByteArrayContent(new byte[4096]),
        _ => null,
    };

    private static HttpClient Client(Uri address, string? token)
    {
        var c = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(30) };
        if (token is not null) c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return c;
    }
}
