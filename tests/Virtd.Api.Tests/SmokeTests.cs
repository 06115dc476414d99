using System.Net;
using Virtd.Testing;

namespace Virtd.Api.Tests;

public sealed class SmokeTests
{
    [Fact]
    public async Task DefineStartGet_RoundTripsThroughHttp()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var created = await http.PostJsonAsync("/api/v1/domains", new { name = "smoke", memoryMiB = 64 });
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        var started = await http.PostAsync("/api/v1/domains/smoke/start?wait=10", null);
        Assert.Equal(HttpStatusCode.OK, started.StatusCode);
        var domain = await (await http.GetAsync("/api/v1/domains/smoke")).ReadJsonAsync();
        Assert.Equal("running", domain.GetProperty("state").GetString());
    }
}
