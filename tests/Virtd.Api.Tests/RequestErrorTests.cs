using System.Net;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Requests the API cannot take: every one answered as problem+json with a stable code.</summary>
public sealed class RequestErrorTests
{
    [Theory]
    [InlineData("{\"name\": \"x\", \"memoryMiB\": ")]
    [InlineData("{\"name\": \"x\" \"memoryMiB\": 64}")]
    [InlineData("{\"name\": \"x\", \"memoryMiB\": 64,}")]
    [InlineData("not json")]
    public async Task Define_MalformedJson_Is400MalformedJson(string body)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains", Raw(body));

        await r.AssertProblemAsync(HttpStatusCode.BadRequest, "malformed-json");
        Assert.Equal(0, (await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Theory]
    [InlineData("POST", "/api/v1/domains", "")]
    [InlineData("POST", "/api/v1/domains", "null")]
    [InlineData("POST", "/api/v1/domains", null)]
    [InlineData("PUT", "/api/v1/domains/x", "")]
    public async Task DefineOrReplace_WithoutABody_Is400MalformedJsonSayingABodyIsRequired(string method, string path, string? body)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("x"));

        var r = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path) { Content = body is null ? null : Raw(body) });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "malformed-json");
        Assert.Contains("body is required", p.Str("detail"));
    }

    [Theory]
    [InlineData("POST", "/api/v1/domains/x/start?wait=soon", "wait")]
    [InlineData("GET", "/api/v1/jobs?limit=ten", "limit")]
    [InlineData("GET", "/api/v1/jobs/00000000-0000-0000-0000-000000000001?wait=1.5", "wait")]
    public async Task QueryValueOfTheWrongType_Is400WithAnErrorsEntryForTheParameter(string method, string path, string field)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("x"));

        var r = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal([field], p.FieldErrors().Keys.ToArray());
        Assert.Equal("shut-off", await http.StateOfAsync("x"));
    }

    [Fact]
    public async Task Define_UnknownField_Is400ValidationFailedNamingTheField()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains", Raw("{\"name\":\"x\",\"memoryMiB\":64,\"memoryMB\":64}"));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["memoryMB"], p.FieldErrors().Keys.ToArray());
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/x")).StatusCode);
    }

    [Theory]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":64,\"machine\":\"microvm\"}", "machine")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":64,\"onCrash\":\"reboot\"}", "onCrash")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":64,\"driver\":1}", "driver")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":\"lots\"}", "memoryMiB")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":\"64\"}", "memoryMiB")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":64,\"disks\":[{\"path\":\"/x\",\"format\":\"vmdk\"}]}", "disks[0].format")]
    [InlineData("{\"name\":\"x\",\"memoryMiB\":64,\"nics\":[{\"mode\":\"user\",\"model\":\"e1000\"}]}", "nics[0].model")]
    public async Task Define_UnknownEnumValueWrongTypeOrNestedUnknownField_Is400KeyedByPath(string body, string path)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains", Raw(body));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal([path], p.FieldErrors().Keys.ToArray());
    }

    [Theory]
    [InlineData("text/plain")]
    [InlineData("application/xml")]
    [InlineData("application/x-www-form-urlencoded")]
    public async Task Define_WrongContentType_Is415(string contentType)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains", Raw("{\"name\":\"x\",\"memoryMiB\":64}", contentType));

        await r.AssertProblemAsync(HttpStatusCode.UnsupportedMediaType, "unsupported-media-type");
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/x")).StatusCode);
    }

    [Fact]
    public async Task Put_WrongContentType_Is415()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("x"));

        var r = await http.PutAsync("/api/v1/domains/x", Raw("{\"name\":\"x\",\"memoryMiB\":128}", "text/plain"));

        await r.AssertProblemAsync(HttpStatusCode.UnsupportedMediaType, "unsupported-media-type");
    }

    [Fact]
    public async Task Put_MalformedJsonOrUnknownField_Is400()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("x"));

        var malformed = await http.PutAsync("/api/v1/domains/x", Raw("{\"name\":"));
        var unknown = await http.PutAsync("/api/v1/domains/x", Raw("{\"name\":\"x\",\"memoryMiB\":64,\"colour\":\"red\"}"));

        await malformed.AssertProblemAsync(HttpStatusCode.BadRequest, "malformed-json");
        var p = await unknown.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["colour"], p.FieldErrors().Keys.ToArray());
    }

    [Fact]
    public async Task Define_BodyOverOneMebibyte_Is413()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var description = new string('x', 1024 * 1024);

        var r = await http.PostAsync("/api/v1/domains", Raw($"{{\"name\":\"big\",\"memoryMiB\":64,\"description\":\"{description}\"}}"));

        await r.AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/big")).StatusCode);
    }

    [Fact]
    public async Task Put_BodyOverOneMebibyte_Is413()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("x"));

        var r = await http.PutAsync("/api/v1/domains/x", Raw($"{{\"name\":\"x\",\"memoryMiB\":64,\"description\":\"{new string('y', 1_100_000)}\"}}"));

        await r.AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");
    }

    [Theory]
    [InlineData("GET", "/api/v1/nothing-here")]
    [InlineData("GET", "/api/v2/domains")]
    [InlineData("POST", "/api/v1/domains/x/teleport")]
    [InlineData("GET", "/api/v1/domains/x/start/now")]
    public async Task UnknownRoute_Is404ProblemJson(string method, string path)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));

        var p = await r.AssertProblemAsync(HttpStatusCode.NotFound, "not-found");
        Assert.Equal(path, p.Str("instance"));
    }

    [Fact]
    public async Task WrongMethodOnAKnownRoute_Is405ProblemJson()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/host", null);

        await r.AssertProblemAsync(HttpStatusCode.MethodNotAllowed, "method-not-allowed");
    }

    [Fact]
    public async Task Problems_CarryTheRequestInstanceAndADistinctTraceId()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var first = await (await http.GetAsync("/api/v1/domains/a?x=1")).AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
        var second = await (await http.GetAsync("/api/v1/domains/b")).AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");

        Assert.Equal("/api/v1/domains/a?x=1", first.Str("instance"));
        Assert.Equal("Domain not found", first.Str("title"));
        Assert.NotEqual(first.Str("traceId"), second.Str("traceId"));
    }
}
