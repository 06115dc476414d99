using System.Net;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>The dashboard's files: served anonymously at /, from this daemon only (no CDN), with their vendored libraries.</summary>
public sealed class DashboardTests
{
    [Theory]
    [InlineData("/", "text/html")]
    [InlineData("/app.js", "text/javascript")]
    [InlineData("/app.css", "text/css")]
    [InlineData("/vendor/xterm/xterm.mjs", "text/javascript")]
    [InlineData("/vendor/novnc/core/rfb.js", "text/javascript")]
    public async Task DashboardFiles_AreServedWithoutCredentials_UnderAPolicyThatAllowsOnlyThisDaemon(string path, string type)
    {
        await using var app = new VirtdApplication();
        using var anonymous = app.CreateClient(token: null);
        using var r = await anonymous.GetAsync(path);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal(type, r.Content.Headers.ContentType?.MediaType);
        var csp = r.Headers.GetValues("Content-Security-Policy").Single();
        Assert.Contains("default-src 'self'", csp);
        Assert.Contains("script-src 'self';", csp);
        Assert.Equal("nosniff", r.Headers.GetValues("X-Content-Type-Options").Single());
    }

    [Fact]
    public async Task TheDashboard_NamesNoOtherHost_AndShipsItsLibrariesLicences()
    {
        await using var app = new VirtdApplication();
        using var anonymous = app.CreateClient(token: null);
        foreach (var path in new[] { "/", "/app.js", "/app.css" })
        {
            var text = await anonymous.GetStringAsync(path);
            Assert.DoesNotMatch(@"(src|href)=""(https?:)?//", text);
        }
        Assert.Contains("Permission is hereby granted", await anonymous.GetStringAsync("/vendor/xterm/LICENSE.xterm.txt"));
        Assert.Contains("MPL 2.0", await anonymous.GetStringAsync("/vendor/novnc/LICENSE.txt"));
        Assert.Contains("Mozilla Public License", await anonymous.GetStringAsync("/vendor/novnc/LICENSE.MPL-2.0.txt"));
        // The API itself still needs credentials.
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/api/v1/domains")).StatusCode);
    }
}
