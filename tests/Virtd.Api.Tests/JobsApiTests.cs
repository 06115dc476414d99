using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>/api/v1/jobs: read, long-poll, list and cancel jobs.</summary>
public sealed class JobsApiTests
{
    [Theory]
    [InlineData("8d5e8a3e-96b5-4cc4-9d4c-7f4b1f8f0e11")]
    [InlineData("not-a-job-id")]
    public async Task GetJob_Unknown_Is404JobNotFound(string id)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync($"/api/v1/jobs/{id}");

        var p = await r.AssertProblemAsync(HttpStatusCode.NotFound, "job-not-found");
        Assert.Contains(id, p.Str("detail"));
    }

    [Fact]
    public async Task GetJob_WithWait_ReturnsAsSoonAsTheJobFinishes()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm", new { bootDelayMs = 1000 }));
        var queued = await http.ActAsync("vm", "start");
        Assert.NotEqual("succeeded", queued.Str("state"));
        var sw = Stopwatch.StartNew();

        var job = await http.GetJobAsync(queued.Id(), wait: 60);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), $"long poll took {sw.Elapsed}");
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task GetJob_WithWait_ThatRunsOut_Returns200WithTheJobStillRunning()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        var start = await http.StartHungAsync("hung");
        var sw = Stopwatch.StartNew();

        var job = await http.GetJobAsync(start.Id(), wait: 1);

        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(0.9), $"returned after {sw.Elapsed}, before the 1 s wait");
        Assert.Equal("running", job.Str("state"));
        Assert.False(job.TryGetProperty("finishedAt", out _));
    }

    [Theory]
    [InlineData(301)]
    [InlineData(-1)]
    public async Task GetJob_WithWaitOutOfRange_Is400(int wait)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        var job = await http.ActAsync("vm", "start", wait: 10);

        var r = await http.GetAsync($"/api/v1/jobs/{job.Id()}?wait={wait}");

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["wait"], p.FieldErrors().Keys.ToArray());
    }

    [Fact]
    public async Task ListJobs_ShowsActionJobsNewestFirst_ButNotDefinitionChanges()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        await http.ActAsync("vm", "start", wait: 10);
        await http.PutAsync("/api/v1/domains/vm", Raw("{\"name\":\"vm\",\"memoryMiB\":80}"));
        await http.ActAsync("vm", "suspend", wait: 10);
        await http.ActAsync("vm", "resume", wait: 10);

        var list = await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync();

        Assert.Equal(3, list.GetProperty("count").GetInt32());
        Assert.Equal(["resume", "suspend", "start"], Kinds(list));
    }

    [Fact]
    public async Task ListJobs_FiltersByDomainNameOrUuid_ByState_AndLimitsTheCount()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("a", new { ignoresAcpi = true });
        var b = await http.DefineRunningAsync("b");
        var failed = await http.ActAsync("a", "shutdown", new { timeout = 0 }, wait: 10);
        Assert.Equal("failed", failed.Str("state"));
        await http.ActAsync("b", "suspend", wait: 10);

        var ofA = await (await http.GetAsync("/api/v1/jobs?domain=a")).ReadJsonAsync();
        var ofB = await (await http.GetAsync($"/api/v1/jobs?domain={b.GetProperty("uuid").GetGuid()}")).ReadJsonAsync();
        var failures = await (await http.GetAsync("/api/v1/jobs?state=failed")).ReadJsonAsync();
        var succeededOfB = await (await http.GetAsync("/api/v1/jobs?state=succeeded&domain=b")).ReadJsonAsync();
        var newestTwo = await (await http.GetAsync("/api/v1/jobs?limit=2")).ReadJsonAsync();
        var ofNobody = await (await http.GetAsync("/api/v1/jobs?domain=nobody")).ReadJsonAsync();

        Assert.Equal(["shutdown", "start"], Kinds(ofA));
        Assert.Equal(["suspend", "start"], Kinds(ofB));
        Assert.Equal([failed.Id()], Ids(failures));
        Assert.Equal("shutdown-timeout", failures.GetProperty("items")[0].GetProperty("error").Str("code"));
        Assert.Equal(["suspend", "start"], Kinds(succeededOfB));
        Assert.Equal(["suspend", "shutdown"], Kinds(newestTwo));
        Assert.Equal(2, newestTwo.GetProperty("count").GetInt32());
        Assert.Equal(0, ofNobody.GetProperty("count").GetInt32());
    }

    [Theory]
    [InlineData("state=done", "state")]
    [InlineData("state=SUCCEEDED", "state")]
    [InlineData("limit=0", "limit")]
    [InlineData("limit=10001", "limit")]
    public async Task ListJobs_InvalidQuery_Is400NamingTheParameter(string query, string field)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/api/v1/jobs?" + query);

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal([field], p.FieldErrors().Keys.ToArray());
    }

    [Fact]
    public async Task CancelJob_Queued_Is202AndTheJobEndsCancelledWithoutRunning()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        await http.StartHungAsync("hung");
        var queued = await http.ActAsync("hung", "shutdown");
        Assert.Equal("queued", queued.Str("state"));

        var r = await http.DeleteAsync($"/api/v1/jobs/{queued.Id()}");

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        Assert.Equal($"/api/v1/jobs/{queued.Id()}", r.Headers.Location?.OriginalString);
        var job = await http.GetJobAsync(queued.Id());
        Assert.Equal("cancelled", job.Str("state"));
        Assert.Equal("cancelled", job.GetProperty("error").Str("code"));
        Assert.False(job.TryGetProperty("startedAt", out _));
        var gate = await (await http.GetAsync("/api/v1/domains/hung/gate")).ReadJsonAsync();
        Assert.Empty(gate.GetProperty("queued").EnumerateArray());
    }

    [Fact]
    public async Task CancelJob_RunningStart_Is202AndTheStartEndsCancelled_LeavingTheDomainOff()
    {
        await using var app = HungDomain.App();
        using var http = app.CreateClient();
        var start = await http.StartHungAsync("hung");

        var r = await http.DeleteAsync($"/api/v1/jobs/{start.Id()}");

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        var job = await http.FinishedJobAsync(start.Id());
        Assert.Equal("cancelled", job.Str("state"));
        Assert.Equal("cancelled", job.GetProperty("error").Str("code"));
        Assert.Equal("shut-off", await http.StateOfAsync("hung"));
        // The gate is free again: a definition change goes through at once.
        var put = await http.PutAsync("/api/v1/domains/hung", Raw("{\"name\":\"hung\",\"memoryMiB\":64}"));
        Assert.Equal(HttpStatusCode.OK, put.StatusCode);
    }

    [Fact]
    public async Task CancelJob_Finished_Is409()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        var job = await http.ActAsync("vm", "start", wait: 10);

        var r = await http.DeleteAsync($"/api/v1/jobs/{job.Id()}");

        var p = await r.AssertProblemAsync(HttpStatusCode.Conflict, "invalid-state");
        Assert.Contains("finished", p.Str("detail"));
        Assert.Equal("succeeded", (await http.GetJobAsync(job.Id())).Str("state"));
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task CancelJob_RunningDestroy_Is409JobNotCancellable_AndTheDestroyCarriesOn()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("wedged", new { ignoresSigterm = true });
        var destroy = await http.ActAsync("wedged", "destroy", new { graceful = true, timeout = 2 });
        await http.RunningJobAsync(destroy.Id());

        var r = await http.DeleteAsync($"/api/v1/jobs/{destroy.Id()}");

        var p = await r.AssertProblemAsync(HttpStatusCode.Conflict, "job-not-cancellable");
        Assert.Contains("destroy", p.Str("detail"));
        var job = await http.FinishedJobAsync(destroy.Id());
        Assert.Equal("failed", job.Str("state"));
        Assert.Equal("destroy-timeout", job.GetProperty("error").Str("code"));
    }

    [Fact]
    public async Task CancelJob_Unknown_Is404()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.DeleteAsync($"/api/v1/jobs/{Guid.NewGuid()}");

        await r.AssertProblemAsync(HttpStatusCode.NotFound, "job-not-found");
    }

    private static string[] Kinds(JsonElement list) => list.GetProperty("items").EnumerateArray().Select(j => j.Str("kind")!).ToArray();

    private static string[] Ids(JsonElement list) => list.GetProperty("items").EnumerateArray().Select(j => j.Id()).ToArray();
}
