using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Jobs are journalled: a client holding a job id finds its job after a restart, a crash included.</summary>
public sealed class JobDurabilityTests
{
    private static Dictionary<string, object?> Simulated(string name, object? simulation = null)
    {
        var d = Definition(name, simulation);
        d["driver"] = "simulated";
        return d;
    }

    [Fact]
    public async Task AfterACleanRestart_EveryJobStillAnswers_AsItEnded()
    {
        var state = TestDirectories.Create("virtd-jobs-");
        var jobs = new List<JsonElement>();
        await using (var first = DaemonProcess.Start(stateDirectory: state))
        {
            await first.WaitReadyAsync();
            await first.Http.DefineAsync(Simulated("vm"));
            jobs.Add(await first.Http.ActAsync("vm", "start", wait: 10));
            jobs.Add(await first.Http.ActAsync("vm", "suspend", wait: 10));
            // A reboot of a paused domain is refused at request time (409): no job.
            Assert.Equal(HttpStatusCode.Conflict, (await first.Http.PostActionAsync("vm", "reboot")).StatusCode);
            first.Terminate();
            Assert.Equal(0, await first.WaitExitAsync(TimeSpan.FromSeconds(20)));
        }
        await using var second = DaemonProcess.Start(stateDirectory: state);
        await second.WaitReadyAsync();

        foreach (var before in jobs)
        {
            var after = await second.Http.GetJobAsync(before.Id());
            Assert.Equal(before.Str("state"), after.Str("state"));
            Assert.Equal(before.Str("kind"), after.Str("kind"));
            Assert.Equal(before.Str("createdAt") is { } c ? DateTimeOffset.Parse(c) : default, DateTimeOffset.Parse(after.Str("createdAt")!));
        }
        var listed = await (await second.Http.GetAsync("/api/v1/jobs?domain=vm")).ReadJsonAsync();
        Assert.Equal(2, listed.GetProperty("count").GetInt32()); // the refused reboot (409 at request time) made no job
    }

    [Fact]
    public async Task AfterAKill_ARunningJobIsInterruptedWithTheObservedState_AQueuedOneCancelled_AndTheGateIsFree()
    {
        var state = TestDirectories.Create("virtd-jobs-");
        var run = TestDirectories.Create("virtd-run-");
        string running, queued, keyed;
        await using (var first = DaemonProcess.Start(stateDirectory: state, runDirectory: run))
        {
            await first.WaitReadyAsync();
            await first.Http.DefineAsync(Simulated("slow", new { bootDelayMs = 600_000 }));
            running = (await first.Http.ActAsync("slow", "start")).Id();
            await first.Http.RunningJobAsync(running);
            queued = (await first.Http.ActAsync("slow", "shutdown", new { timeout = 5 })).Id();
            var request = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains/slow/start");
            request.Headers.Add("Idempotency-Key", "start-once");
            var acknowledged = await first.Http.SendAsync(request);
            Assert.Equal(HttpStatusCode.Accepted, acknowledged.StatusCode);
            keyed = (await acknowledged.ReadJsonAsync()).Id();
            await first.KillAsync();
        }
        await using var second = DaemonProcess.Start(stateDirectory: state, runDirectory: run);
        await second.WaitReadyAsync();

        var interrupted = await second.Http.GetJobAsync(running);
        Assert.Equal("interrupted", interrupted.Str("state"));
        Assert.Equal("interrupted", interrupted.GetProperty("error").Str("code"));
        Assert.Equal("shut-off", interrupted.GetProperty("result").Str("observedState"));
        var cancelled = await second.Http.GetJobAsync(queued);
        Assert.Equal("cancelled", cancelled.Str("state"));
        Assert.Equal("daemon-restart", cancelled.GetProperty("error").Str("code"));
        Assert.Equal("cancelled", (await second.Http.GetJobAsync(keyed)).Str("state"));

        // Nothing from before the kill holds the gate: the domain can be acted on at once.
        var gate = await (await second.Http.GetAsync("/api/v1/domains/slow/gate")).ReadJsonAsync();
        Assert.Equal(JsonValueKind.Null, gate.TryGetProperty("holder", out var h) ? h.ValueKind : JsonValueKind.Null);
        Assert.Equal(0, gate.GetProperty("queued").GetArrayLength());
        Assert.Equal("succeeded", (await second.Http.ActAsync("slow", "destroy", wait: 10)).Str("state"));

        // The key acknowledged before the kill still stands for its job.
        var retry = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains/slow/start");
        retry.Headers.Add("Idempotency-Key", "start-once");
        var replayed = await second.Http.SendAsync(retry);
        Assert.Equal(HttpStatusCode.Accepted, replayed.StatusCode);
        Assert.Equal(keyed, (await replayed.ReadJsonAsync()).Id());
        Assert.Equal("true", replayed.Headers.GetValues("Idempotent-Replayed").Single());
    }

    [Fact]
    public async Task WithTheJournalOff_JobsLiveInMemoryOnly()
    {
        var state = TestDirectories.Create("virtd-jobs-");
        string id;
        await using (var first = DaemonProcess.Start(["--Jobs:Journal", "false"], stateDirectory: state))
        {
            await first.WaitReadyAsync();
            await first.Http.DefineAsync(Simulated("vm"));
            id = (await first.Http.ActAsync("vm", "start", wait: 10)).Id();
            await first.KillAsync();
        }
        Assert.False(File.Exists(Path.Combine(state, "jobs", "journal")));
        await using var second = DaemonProcess.Start(["--Jobs:Journal", "false"], stateDirectory: state);
        await second.WaitReadyAsync();
        await (await second.Http.GetAsync($"/api/v1/jobs/{id}")).AssertProblemAsync(HttpStatusCode.NotFound, "job-not-found");
    }
}
