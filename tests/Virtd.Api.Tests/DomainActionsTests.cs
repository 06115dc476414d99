using System.Diagnostics;
using System.Net;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>POST /api/v1/domains/{id}/{action}: actions are jobs, answered 202 + Location or, with ?wait=, 200.</summary>
public sealed class DomainActionsTests
{
    [Fact]
    public async Task Start_Returns202WithTheJobAndItsLocation_AndTheJobThenSucceeds()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var uuid = (await http.DefineAsync(Definition("vm"))).GetProperty("uuid").GetGuid();

        var r = await http.PostActionAsync("vm", "start");

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        var job = await r.ReadJsonAsync();
        Assert.Equal($"/api/v1/jobs/{job.Id()}", r.Headers.Location?.OriginalString);
        Assert.Equal("start", job.Str("kind"));
        Assert.Equal("vm", job.Str("domain"));
        Assert.Equal(uuid, job.GetProperty("domainUuid").GetGuid());
        Assert.True(job.TryGetProperty("createdAt", out _));

        var done = await http.FinishedJobAsync(job.Id());
        Assert.Equal("succeeded", done.Str("state"));
        Assert.Equal("running", done.GetProperty("result").Str("state"));
        Assert.True(done.TryGetProperty("startedAt", out _));
        Assert.True(done.TryGetProperty("finishedAt", out _));
        Assert.False(done.TryGetProperty("error", out _));

        var d = await http.GetDomainAsync("vm");
        Assert.Equal("running", d.Str("state"));
        Assert.True(d.GetProperty("pid").GetInt32() > 0);
        Assert.True(d.TryGetProperty("startedAt", out _));
    }

    [Fact]
    public async Task Action_WithWait_Returns200WithTheFinishedJob()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm", new { bootDelayMs = 300 }));

        var r = await http.PostActionAsync("vm", "start", wait: 10);

        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var job = await r.ReadJsonAsync();
        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task Action_WhoseJobOutlastsTheWait_Returns202WithTheUnfinishedJobAndLocation()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("slow", new { bootDelayMs = 20_000 }));
        var sw = Stopwatch.StartNew();

        var r = await http.PostActionAsync("slow", "start", wait: 1);

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(0.9), $"answered after {sw.Elapsed}, before the 1 s wait");
        var job = await r.ReadJsonAsync();
        Assert.Equal("running", job.Str("state"));
        Assert.False(job.TryGetProperty("finishedAt", out _));
        Assert.Equal($"/api/v1/jobs/{job.Id()}", r.Headers.Location?.OriginalString);
    }

    [Fact]
    public async Task Action_WithWaitZero_Returns202()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var r = await http.PostActionAsync("vm", "start", wait: 0);

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
    }

    [Theory]
    [InlineData(301)]
    [InlineData(-1)]
    [InlineData(100_000)]
    public async Task Action_WithWaitOutOfRange_Is400AndQueuesNothing(int wait)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var r = await http.PostActionAsync("vm", "start", wait: wait);

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["wait"], p.FieldErrors().Keys.ToArray());
        Assert.Equal("shut-off", await http.StateOfAsync("vm"));
        Assert.Equal(0, (await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Theory]
    [InlineData("start")]
    [InlineData("shutdown")]
    [InlineData("reboot")]
    [InlineData("reset")]
    [InlineData("suspend")]
    [InlineData("resume")]
    [InlineData("destroy")]
    public async Task Action_OnAnUnknownDomain_Is404(string action)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostActionAsync("nobody", action);

        await r.AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
    }

    [Theory]
    [InlineData("suspend")]
    [InlineData("resume")]
    [InlineData("reset")]
    [InlineData("reboot")]
    public async Task ActionThatNeedsARunningDomain_OnAShutOffOne_Is409InvalidState(string action)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("off"));

        var r = await http.PostActionAsync("off", action);

        var p = await r.AssertProblemAsync(HttpStatusCode.Conflict, "invalid-state");
        Assert.Contains("off", p.Str("detail"));
        Assert.Equal(0, (await (await http.GetAsync("/api/v1/jobs?domain=off")).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Theory]
    [InlineData("start")]
    [InlineData("reboot")]
    public async Task StartOrReboot_OfAPausedDomain_Is409InvalidState(string action)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("paused");
        await http.ActAsync("paused", "suspend", wait: 10);

        var r = await http.PostActionAsync("paused", action);

        await r.AssertProblemAsync(HttpStatusCode.Conflict, "invalid-state");
        Assert.Equal("paused", await http.StateOfAsync("paused"));
    }

    [Fact]
    public async Task Actions_AcceptTheUuidAsTheDomainId()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var uuid = (await http.DefineAsync(Definition("by-uuid"))).GetProperty("uuid").GetGuid();

        var job = await http.ActAsync(uuid.ToString(), "start", wait: 10);

        Assert.Equal("by-uuid", job.Str("domain"));
        Assert.Equal("running", await http.StateOfAsync("by-uuid"));
    }

    [Theory]
    [InlineData("start", "running")]
    [InlineData("resume", "running")]
    [InlineData("suspend", "paused")]
    [InlineData("destroy", "shut-off")]
    [InlineData("shutdown", "shut-off")]
    public async Task Action_WhoseTargetStateAlreadyHolds_SucceedsAsNoop(string action, string state)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        if (state is "running" or "paused") await http.ActAsync("vm", "start", wait: 10);
        if (state == "paused") await http.ActAsync("vm", "suspend", wait: 10);
        var pid = (await http.GetDomainAsync("vm")).TryGetProperty("pid", out var p) ? p.GetInt32() : 0;

        var job = await http.ActAsync("vm", action, wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.True(job.GetProperty("result").GetProperty("noop").GetBoolean(), $"{action} on {state}: {job}");
        var d = await http.GetDomainAsync("vm");
        Assert.Equal(state, d.Str("state"));
        Assert.Equal(pid, d.TryGetProperty("pid", out p) ? p.GetInt32() : 0);
    }

    [Fact]
    public async Task SuspendAndResume_PauseAndContinueTheSameVm()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var pid = (await http.DefineRunningAsync("vm")).GetProperty("pid").GetInt32();

        var suspended = await http.ActAsync("vm", "suspend", wait: 10);
        Assert.Equal("paused", suspended.GetProperty("result").Str("state"));
        Assert.False(suspended.GetProperty("result").TryGetProperty("noop", out _));
        Assert.Equal("paused", await http.StateOfAsync("vm"));

        var resumed = await http.ActAsync("vm", "resume", wait: 10);
        Assert.Equal("running", resumed.GetProperty("result").Str("state"));
        var d = await http.GetDomainAsync("vm");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
    }

    [Fact]
    public async Task Reset_KeepsTheSameVmRunning()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var pid = (await http.DefineRunningAsync("vm")).GetProperty("pid").GetInt32();

        var job = await http.ActAsync("vm", "reset", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await http.GetDomainAsync("vm");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
    }

    [Fact]
    public async Task Reboot_WithOnRebootRestart_KeepsTheDomainRunning()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");

        var job = await http.ActAsync("vm", "reboot", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task Reboot_WithOnRebootDestroy_LeavesTheDomainShutOff()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(new { name = "vm", memoryMiB = 64, onReboot = "destroy" });
        await http.ActAsync("vm", "start", wait: 10);

        var job = await http.ActAsync("vm", "reboot", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        var d = await PollAsync(() => http.GetDomainAsync("vm"), d => d.Str("state") == "shut-off", "the domain to go off");
        Assert.False(d.TryGetProperty("pid", out _));
    }

    [Fact]
    public async Task Shutdown_PowersOffByAcpi_ShowingShuttingDownMeanwhile()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm", new { acpiShutdownDelayMs = 1500 });

        var queued = await http.ActAsync("vm", "shutdown", new { timeout = 30 });
        await PollAsync(() => http.GetDomainAsync("vm"), d => d.Str("state") == "shutting-down", "the domain to be shutting down");
        var job = await http.FinishedJobAsync(queued.Id());

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("acpi", job.GetProperty("result").Str("stoppedBy"));
        var d = await http.GetDomainAsync("vm");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("shutdown", d.Str("reason"));
    }

    [Fact]
    public async Task Shutdown_WhenTheGuestIgnoresAcpi_FailsShutdownTimeout_AndTheDomainStaysRunning()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var pid = (await http.DefineRunningAsync("stubborn", new { ignoresAcpi = true })).GetProperty("pid").GetInt32();

        var job = await http.ActAsync("stubborn", "shutdown", new { timeout = 1 }, wait: 10);

        Assert.Equal("failed", job.Str("state"));
        var error = job.GetProperty("error");
        Assert.Equal("shutdown-timeout", error.Str("code"));
        Assert.EndsWith("/shutdown-timeout", error.Str("type"));
        Assert.False(string.IsNullOrEmpty(error.Str("detail")));
        var d = await http.GetDomainAsync("stubborn");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());
    }

    [Fact]
    public async Task Shutdown_WithForce_WhenTheGuestIgnoresAcpi_EscalatesToSigterm()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("stubborn", new { ignoresAcpi = true });

        var job = await http.ActAsync("stubborn", "shutdown", new { timeout = 1, force = true }, wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("sigterm", job.GetProperty("result").Str("stoppedBy"));
        Assert.Equal("shut-off", await http.StateOfAsync("stubborn"));
    }

    [Theory]
    [InlineData("shutdown", "{\"timeout\": 3601}", "timeout")]
    [InlineData("shutdown", "{\"timeout\": -5}", "timeout")]
    [InlineData("destroy", "{\"timeout\": 99999}", "timeout")]
    [InlineData("shutdown", "{\"force\": true, \"graceful\": true}", "graceful")]
    [InlineData("destroy", "{\"graceful\": \"yes\"}", "graceful")]
    public async Task StopAction_WithAnInvalidBody_Is400AndLeavesTheDomainRunning(string action, string body, string field)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");

        var r = await http.PostAsync($"/api/v1/domains/vm/{action}", Raw(body));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal([field], p.FieldErrors().Keys.ToArray());
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task StopAction_WithMalformedJson_Is400MalformedJson()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");

        var r = await http.PostAsync("/api/v1/domains/vm/destroy", Raw("{\"graceful\": tru"));

        await r.AssertProblemAsync(HttpStatusCode.BadRequest, "malformed-json");
        Assert.Equal("running", await http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task Destroy_OfARunningDomain_StopsItWithSigterm()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");

        var job = await http.ActAsync("vm", "destroy", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        var result = job.GetProperty("result");
        Assert.False(result.TryGetProperty("noop", out _), $"a destroy that stopped a running VM is not a no-op: {job}");
        Assert.Equal("sigterm", result.Str("stoppedBy"));
        var d = await http.GetDomainAsync("vm");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("destroyed", d.Str("reason"));
    }

    [Fact]
    public async Task Destroy_Graceful_WhenTheProcessIgnoresSigterm_FailsDestroyTimeoutWithoutKilling()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var pid = (await http.DefineRunningAsync("wedged", new { ignoresSigterm = true })).GetProperty("pid").GetInt32();

        var job = await http.ActAsync("wedged", "destroy", new { graceful = true, timeout = 1 }, wait: 10);

        Assert.Equal("failed", job.Str("state"));
        Assert.Equal("destroy-timeout", job.GetProperty("error").Str("code"));
        var d = await http.GetDomainAsync("wedged");
        Assert.Equal("running", d.Str("state"));
        Assert.Equal(pid, d.GetProperty("pid").GetInt32());

        // Still fully usable afterwards: the failed destroy left no stop intent behind.
        var suspended = await http.ActAsync("wedged", "suspend", wait: 10);
        Assert.Equal("succeeded", suspended.Str("state"));
    }

    [Fact]
    public async Task Destroy_NotGraceful_WhenTheProcessIgnoresSigterm_KillsItWithSigkill()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("wedged", new { ignoresSigterm = true });

        var job = await http.ActAsync("wedged", "destroy", new { timeout = 1 }, wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("sigkill", job.GetProperty("result").Str("stoppedBy"));
        var d = await http.GetDomainAsync("wedged");
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("destroyed", d.Str("reason"));
    }

    [Fact]
    public async Task Destroy_OfAPausedDomain_StopsIt()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("vm");
        await http.ActAsync("vm", "suspend", wait: 10);

        var job = await http.ActAsync("vm", "destroy", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.Equal("shut-off", await http.StateOfAsync("vm"));
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/vm")).StatusCode);
    }

    [Fact]
    public async Task Start_AfterShutdown_RunsAgainWithANewProcess()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var first = (await http.DefineRunningAsync("vm")).GetProperty("pid").GetInt32();
        await http.ActAsync("vm", "shutdown", wait: 10);

        var job = await http.ActAsync("vm", "start", wait: 10);

        Assert.Equal("succeeded", job.Str("state"));
        Assert.False(job.GetProperty("result").TryGetProperty("noop", out _));
        var d = await http.GetDomainAsync("vm");
        Assert.Equal("running", d.Str("state"));
        Assert.NotEqual(first, d.GetProperty("pid").GetInt32());
    }
}
