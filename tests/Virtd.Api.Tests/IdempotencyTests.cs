using System.Net;
using System.Text.Json;
using Virtd.Api.Tests.Access;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Idempotency-Key on the POSTs that make something: a retry gets the first answer, never a second job.</summary>
public sealed class IdempotencyTests
{
    private static HttpRequestMessage Post(string path, string? body, string key)
    {
        var r = new HttpRequestMessage(HttpMethod.Post, path) { Content = body is null ? null : Raw(body) };
        r.Headers.TryAddWithoutValidation("Idempotency-Key", key);
        return r;
    }

    [Fact]
    public async Task AnActionRetriedWithItsKey_GetsTheSameJobAndStatus_MarkedReplayed()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var first = await http.SendAsync(Post("/api/v1/domains/vm/start", null, "\"start-1\""));
        var again = await http.SendAsync(Post("/api/v1/domains/vm/start", null, "\"start-1\""));

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
        Assert.False(first.Headers.Contains("Idempotent-Replayed"));
        Assert.Equal("true", again.Headers.GetValues("Idempotent-Replayed").Single());
        var id = (await first.ReadJsonAsync()).Id();
        Assert.Equal(id, (await again.ReadJsonAsync()).Id());
        Assert.Equal(first.Headers.Location, again.Headers.Location);
        Assert.Equal(1, (await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task AWaitedActionRetried_GetsThe200AgainWithTheJobAsItIsNow()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var first = await http.SendAsync(Post("/api/v1/domains/vm/start?wait=10", null, "k"));
        var again = await http.SendAsync(Post("/api/v1/domains/vm/start?wait=10", null, "k"));

        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        Assert.Equal("succeeded", (await again.ReadJsonAsync()).Str("state"));
    }

    [Fact]
    public async Task TheSameKeyWithAnotherBody_Is422_AndQueuesNothing()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");

        var first = await http.SendAsync(Post("/api/v1/domains/vm/shutdown", "{\"timeout\":30}", "sd"));
        var other = await http.SendAsync(Post("/api/v1/domains/vm/shutdown", "{\"timeout\":31}", "sd"));
        var elsewhere = await http.SendAsync(Post("/api/v1/domains/vm/destroy", "{\"timeout\":30}", "sd"));

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        await other.AssertProblemAsync(HttpStatusCode.UnprocessableEntity, "idempotency-key-reused");
        await elsewhere.AssertProblemAsync(HttpStatusCode.UnprocessableEntity, "idempotency-key-reused");
        var jobs = await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync();
        Assert.Equal(2, jobs.GetProperty("count").GetInt32()); // the start and the one shutdown
    }

    [Fact]
    public async Task WhileTheFirstRequestWaits_ARetryIs409InFlight_AndAfterItGetsTheAnswer()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("slow", new { bootDelayMs = 1500 }));

        var first = http.SendAsync(Post("/api/v1/domains/slow/start?wait=30", null, "slow-start"));
        // The first request has made its job and now waits for it (1.5 s of boot).
        await PollAsync(async () => await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync(), j => j.GetProperty("count").GetInt32() == 1, "the first job");
        var during = await http.SendAsync(Post("/api/v1/domains/slow/start?wait=30", null, "slow-start"));
        var answered = await first;
        var after = await http.SendAsync(Post("/api/v1/domains/slow/start?wait=30", null, "slow-start"));

        await during.AssertProblemAsync(HttpStatusCode.Conflict, "idempotency-key-in-flight");
        Assert.Equal(HttpStatusCode.OK, answered.StatusCode);
        Assert.Equal(HttpStatusCode.OK, after.StatusCode);
        Assert.Equal((await answered.ReadJsonAsync()).Id(), (await after.ReadJsonAsync()).Id());
    }

    [Fact]
    public async Task AFailedFirstRequest_FreesTheKey()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var refused = await http.SendAsync(Post("/api/v1/domains/vm/suspend", null, "k"));
        await http.ActAsync("vm", "start", wait: 10);
        var retried = await http.SendAsync(Post("/api/v1/domains/vm/suspend", null, "k"));

        await refused.AssertProblemAsync(HttpStatusCode.Conflict, "invalid-state");
        Assert.Equal(HttpStatusCode.Accepted, retried.StatusCode);
    }

    [Fact]
    public async Task KeysArePerIdentity_AnotherCallersSameKeyMakesItsOwnJob()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineRunningAsync("vm");
        using var ci = app.CreateClient(await TokenTests.CreateTokenAsync(admin, "ci", "operator"));

        var a = await admin.SendAsync(Post("/api/v1/domains/vm/reset", null, "shared"));
        var b = await ci.SendAsync(Post("/api/v1/domains/vm/reset", null, "shared"));

        Assert.Equal(HttpStatusCode.Accepted, b.StatusCode);
        Assert.NotEqual((await a.ReadJsonAsync()).Id(), (await b.ReadJsonAsync()).Id());
        Assert.False(b.Headers.Contains("Idempotent-Replayed"));
    }

    [Fact]
    public async Task DefineAndTokenCreationRetried_ReturnTheFirstResult_TheTokenWithoutItsSecret()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var define = await http.SendAsync(Post("/api/v1/domains", "{\"name\":\"once\",\"memoryMiB\":64}", "def"));
        var defineAgain = await http.SendAsync(Post("/api/v1/domains", "{\"name\":\"once\",\"memoryMiB\":64}", "def"));
        var token = await http.SendAsync(Post("/api/v1/tokens", "{\"name\":\"ci\",\"role\":\"reader\"}", "tok"));
        var tokenAgain = await http.SendAsync(Post("/api/v1/tokens", "{\"name\":\"ci\",\"role\":\"reader\"}", "tok"));

        Assert.Equal(HttpStatusCode.Created, define.StatusCode);
        Assert.Equal(HttpStatusCode.Created, defineAgain.StatusCode);
        Assert.Equal("true", defineAgain.Headers.GetValues("Idempotent-Replayed").Single());
        Assert.Equal((await define.ReadJsonAsync()).GetProperty("uuid").GetGuid(), (await defineAgain.ReadJsonAsync()).GetProperty("uuid").GetGuid());
        Assert.Equal(define.ETag(), defineAgain.ETag());
        Assert.Equal(HttpStatusCode.Created, tokenAgain.StatusCode);
        Assert.NotNull((await token.ReadJsonAsync()).Str("secret"));
        var replayed = await tokenAgain.ReadJsonAsync();
        Assert.Equal("ci", replayed.Str("name"));
        Assert.Null(replayed.Str("secret"));
    }

    [Theory]
    [InlineData("\"\"")]
    [InlineData("k\u00e9y")]
    public async Task ABadKey_Is400NamingTheHeader(string key)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var r = await http.SendAsync(Post("/api/v1/domains/vm/start", null, key));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["idempotencyKey"], p.FieldErrors().Keys);
    }

    [Fact]
    public async Task AKeyOver255Characters_Is400()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var ok = await http.SendAsync(Post("/api/v1/domains/vm/start", null, new string('k', 255)));
        var r = await http.SendAsync(Post("/api/v1/domains/vm/start", null, new string('k', 256)));

        Assert.Equal(HttpStatusCode.Accepted, ok.StatusCode);
        Assert.Contains("at most 255", (await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed")).Str("detail"));
    }
}
