using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Virtd.Stress.Tests.Support;
using Xunit.Abstractions;

namespace Virtd.Stress.Tests;

/// <summary>
/// 50 domains, 32 concurrent clients, 20 s of random actions and reads through real HTTP (Kestrel on
/// loopback), some domains with injected faults. Then: every accepted job ends; no 5xx ever; each
/// domain's state is what its last job left (or what its guest did on its own since); a final destroy
/// leaves every domain shut off; and no two jobs of a domain ever held its gate at the same time.
/// </summary>
public sealed class StressTests(ITestOutputHelper output)
{
    private const int DomainCount = 50;
    private const int ClientCount = 32;
    private const int PerDomainQueueLimit = 4;

    /// <summary>Length of the random phase; <c>VIRTD_STRESS_SECONDS</c> overrides it (e.g. for a longer soak).</summary>
    private static readonly TimeSpan RunTime = TimeSpan.FromSeconds(
        int.TryParse(Environment.GetEnvironmentVariable("VIRTD_STRESS_SECONDS"), CultureInfo.InvariantCulture, out var s) && s > 0 ? s : 20);

    [Fact]
    public async Task RandomConcurrentActions_EveryJobEnds_NoServerError_GateNeverShared_StatesMatchJobs()
    {
        var total = Stopwatch.StartNew();
        await using var daemon = new KestrelVirtd(new Dictionary<string, string?>
        {
            // Everything that waits is short, so that every job ends within the test.
            ["Jobs:WaitTimeout"] = "00:00:02",
            ["Simulated:MonitorTimeout"] = "00:00:01",
            // Small queues, so that clients meet 429 and must back off.
            ["Jobs:PerDomainQueueLimit"] = PerDomainQueueLimit.ToString(CultureInfo.InvariantCulture),
            ["Jobs:QueueLimit"] = "128",
            // Keep every finished job: each one is checked at the end.
            ["Jobs:RetentionCount"] = "10000000",
            ["Jobs:Retention"] = "01:00:00",
        });
        var baseAddress = daemon.Start();
        using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = ClientCount * 2, PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5) };
        using var http = daemon.Authorize(new HttpClient(handler) { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(30) });
        var rec = new StressRecorder();
        var api = new VirtdHttp(http, rec);
        output.WriteLine($"virtd on {baseAddress} (Kestrel via WebApplicationFactory.UseKestrel); random phase {RunTime.TotalSeconds} s");

        await WaitReadyAsync(http);
        var domains = await DefineDomainsAsync(api);
        var setup = total.Elapsed;

        // 1. Random phase.
        using (var stop = new CancellationTokenSource(RunTime))
        {
            var clients = Enumerable.Range(0, ClientCount).Select(i => new StressClient(api, rec, domains, seed: 1000 + i).RunAsync(stop.Token));
            await Task.WhenAll(clients);
        }
        var random = total.Elapsed - setup;
        var requests = rec.Requests;
        output.WriteLine($"random phase: {requests} requests in {random.TotalSeconds:0.0} s ({requests / random.TotalSeconds:0} req/s), " +
                         $"{rec.Accepted.Count} jobs accepted, {rec.Backoffs} backoffs on 429, " +
                         $"{rec.GateSamples.Count} gate samples ({rec.GateSamples.Count(g => g.HolderId is not null)} with a holder)");

        // 2. Every accepted job ends in a final state, seen through GET /jobs/{id}?wait=.
        await DrainAsync(api, rec);
        await WaitNoUnfinishedJobsAsync(api, rec);
        var drained = total.Elapsed;

        // 3. Each domain's state is what its last job left, unless its guest powered off on its own since.
        var uuids = new Dictionary<string, Guid>();
        foreach (var name in domains) uuids[name] = await CheckStateMatchesLastJobAsync(api, rec, name);

        // 4. A final destroy?wait= leaves every domain shut off.
        await FinalDestroyAsync(api, rec, domains);

        // 5. From the job records: each domain's jobs ran one at a time, and the gate samples agree.
        var allJobs = new List<JobView>();
        foreach (var name in domains) allJobs.AddRange(await CheckJobRecordsAsync(api, rec, name, uuids[name]));
        var missing = rec.Accepted.Keys.Except(allJobs.Select(j => j.Id)).ToList();
        if (missing.Count > 0) rec.Fail($"{missing.Count} accepted jobs are missing from GET /jobs?domain=, e.g. {rec.Accepted[missing[0]]}");

        // 6. Nothing went wrong inside: no error was logged.
        foreach (var (level, category, message) in daemon.Logs.Entries.Where(e => e.Level >= LogLevel.Error).Take(5))
            rec.Fail($"the daemon logged {level} from {category}: {message}");

        output.WriteLine($"setup {setup.TotalSeconds:0.0} s, random {random.TotalSeconds:0.0} s, drain {(drained - setup - random).TotalSeconds:0.0} s, " +
                         $"checks {(total.Elapsed - drained).TotalSeconds:0.0} s, total {total.Elapsed.TotalSeconds:0.0} s");
        output.WriteLine("jobs by kind and final state: " + string.Join(", ", allJobs
            .GroupBy(j => $"{j.Kind}/{j.State}{(j.Error is null ? "" : "/" + j.Error.Code)}").OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => $"{g.Key} {g.Count()}")));
        output.WriteLine($"daemon log entries (warning+): {daemon.Logs.Entries.Count}");
        output.WriteLine("responses:" + Environment.NewLine + rec.Summary());

        Assert.True(rec.Accepted.Count >= 500, $"only {rec.Accepted.Count} jobs were accepted: the run did not stress anything");
        Assert.True(rec.FailureCount == 0, rec.Failures());
    }

    private static async Task WaitReadyAsync(HttpClient http)
    {
        var deadline = DateTimeOffset.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            using var r = await http.GetAsync("/readyz");
            if (r.IsSuccessStatusCode) return;
            Assert.True(DateTimeOffset.UtcNow < deadline, $"/readyz still {(int)r.StatusCode} after 10 s");
            await Task.Delay(20);
        }
    }

    /// <summary>Ten kinds of domain, five of each: well-behaved ones and ones with injected faults.</summary>
    private static object Simulation(int i) => (i % 10) switch
    {
        0 => new { },
        1 => new { bootDelayMs = 400 },
        2 => new { acpiShutdownDelayMs = 800 },
        3 => new { ignoresAcpi = true },
        4 => new { ignoresSigterm = true },
        5 => new { acpiShutdownDelayMs = 1500 },
        6 => new { bootDelayMs = 300, acpiShutdownDelayMs = 300 },
        7 => new { ignoresAcpi = true, ignoresSigterm = true },
        8 => new { acpiShutdownDelayMs = 20 },
        _ => i is 9 or 39 ? new { hangMonitor = true } : new { bootDelayMs = 100, acpiShutdownDelayMs = 200, ignoresSigterm = true },
    };

    private static async Task<List<string>> DefineDomainsAsync(VirtdHttp api)
    {
        var names = Enumerable.Range(0, DomainCount).Select(i => $"stress-{i:00}").ToList();
        var responses = await Task.WhenAll(names.Select((name, i) => api.PostAsync("POST define", "/api/v1/domains", new
        {
            name,
            memoryMiB = 64,
            onPoweroff = i % 10 is 5 or 8 ? "restart" : "destroy",
            onReboot = i % 10 is 6 or 8 ? "destroy" : "restart",
            simulation = Simulation(i),
        }, 201)));
        foreach (var r in responses) Assert.True(r.Status == 201, $"define failed: {r}");
        return names;
    }

    /// <summary>GET /jobs/{id}?wait= for every accepted job until it is final (bounded).</summary>
    private static async Task DrainAsync(VirtdHttp api, StressRecorder rec)
    {
        var deadline = DateTimeOffset.UtcNow + TimeSpan.FromSeconds(20);
        await Parallel.ForEachAsync(rec.Accepted.Values, new ParallelOptions { MaxDegreeOfParallelism = ClientCount }, async (job, _) =>
        {
            while (true)
            {
                var left = (int)Math.Ceiling((deadline - DateTimeOffset.UtcNow).TotalSeconds);
                var r = await api.GetAsync("GET job?wait (drain)", $"/api/v1/jobs/{job.Id}?wait={Math.Clamp(left, 0, 20)}", 200);
                if (r.Status != 200) return;
                var j = r.Read<JobView>();
                if (j.IsFinal) return;
                if (left <= 0)
                {
                    rec.Fail($"job never finished: {j} on {job.Domain}");
                    return;
                }
            }
        });
    }

    /// <summary>Jobs the daemon queued itself (restart after a guest power-off) must end too.</summary>
    private static async Task WaitNoUnfinishedJobsAsync(VirtdHttp api, StressRecorder rec)
    {
        var deadline = DateTimeOffset.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            var unfinished = new List<JobView>();
            foreach (var state in new[] { "queued", "running" })
            {
                var r = await api.GetAsync("GET jobs?state (drain)", $"/api/v1/jobs?state={state}&limit=10", 200);
                if (r.Status == 200) unfinished.AddRange(r.Read<JobListView>().Items);
            }
            if (unfinished.Count == 0) return;
            if (DateTimeOffset.UtcNow > deadline)
            {
                rec.Fail($"jobs still unfinished 10 s after the drain: {string.Join("; ", unfinished.Take(5))}");
                return;
            }
            // Wait on one of them rather than sleep.
            await api.GetAsync("GET job?wait (drain)", $"/api/v1/jobs/{unfinished[0].Id}?wait=2", 200);
        }
    }

    private static async Task<DomainView?> GetDomainAsync(VirtdHttp api, StressRecorder rec, string name, string source)
    {
        var r = await api.GetAsync("GET domain (check)", $"/api/v1/domains/{name}", 200);
        if (r.Status != 200) return null;
        var d = r.Read<DomainView>();
        rec.CheckDomain(d, source);
        return d;
    }

    private static async Task<List<JobView>> JobsOfAsync(VirtdHttp api, StressRecorder rec, string name, Guid uuid)
    {
        var r = await api.GetAsync("GET jobs?domain (check)", $"/api/v1/jobs?domain={uuid}&limit=10000", 200);
        if (r.Status != 200) return [];
        var list = r.Read<JobListView>();
        if (list.Count >= 10000) rec.Fail($"{name} has 10000 jobs or more: the check would miss some");
        return list.Items;
    }

    /// <summary>
    /// With every job ended: the domain's state is the <c>result.state</c> of its last succeeded job.
    /// The one exception a user would accept is the guest powering off on its own after a shutdown
    /// request had given up (timed out or cancelled, the power button still pressed): then it is shut
    /// off with reason <c>guest-shutdown</c>, changed after that last job. Polled briefly (a pressed
    /// button may still fire, and restart the domain), never slept on.
    /// </summary>
    private static async Task<Guid> CheckStateMatchesLastJobAsync(VirtdHttp api, StressRecorder rec, string name)
    {
        var deadline = DateTimeOffset.UtcNow + TimeSpan.FromSeconds(3);
        while (true)
        {
            var before = await GetDomainAsync(api, rec, name, "check");
            if (before is null) return Guid.Empty;
            var jobs = await JobsOfAsync(api, rec, name, before.Uuid);
            var after = await GetDomainAsync(api, rec, name, "check");
            if (after is null) return before.Uuid;
            var problem = before.StateChangedAt != after.StateChangedAt || jobs.Any(j => !j.IsFinal)
                ? "it changed while being checked"
                : StateProblem(after, jobs);
            if (problem is null) return before.Uuid;
            if (DateTimeOffset.UtcNow > deadline)
            {
                rec.Fail($"{after}: {problem}; its last jobs: {string.Join(" | ", jobs.OrderByDescending(j => j.CreatedAt).Take(6))}");
                return before.Uuid;
            }
            // A pressed power button fires within 1.5 s: long-poll the newest job, do not sleep.
            await api.GetAsync("GET job?wait (check)", $"/api/v1/jobs/{jobs.OrderByDescending(j => j.CreatedAt).FirstOrDefault()?.Id ?? Guid.Empty}?wait=1", 200, 404);
        }
    }

    private static string? StateProblem(DomainView d, List<JobView> jobs)
    {
        foreach (var j in jobs.Where(j => j.State == "succeeded"))
        {
            if (j.Result?.State is null) return $"succeeded job without result.state: {j}";
            if (j.Result.State == "shutting-down") return $"a job ended leaving it shutting down: {j}";
            if (j.Kind is "destroy" or "shutdown" && j.Result.State != "shut-off") return $"a {j.Kind} succeeded leaving it {j.Result.State}: {j}";
        }
        var last = jobs.Where(j => j.State == "succeeded").MaxBy(j => j.FinishedAt);
        var expected = last?.Result?.State ?? "shut-off";
        if (d.State == expected) return null;
        var guestPoweredOff = d.State == "shut-off" && d.Reason == "guest-shutdown"
            && (last is null || d.StateChangedAt >= last.FinishedAt)
            && jobs.Any(j => j.Kind == "shutdown" && j.StartedAt is not null && j.State != "succeeded");
        if (guestPoweredOff) return null;
        return last is null
            ? $"is {d.State} but no job of it ever succeeded"
            : $"is {d.State} but its last succeeded job left it {expected} ({last})";
    }

    private static async Task FinalDestroyAsync(VirtdHttp api, StressRecorder rec, List<string> domains)
    {
        var responses = await Task.WhenAll(domains.Select(name =>
            api.PostAsync("POST destroy?wait (final)", $"/api/v1/domains/{name}/destroy?wait=20", new { timeout = 1 }, 200)));
        foreach (var r in responses.Where(r => r.Status == 200))
        {
            var job = r.Read<JobView>();
            if (job.State != "succeeded" || job.Result?.State != "shut-off") rec.Fail($"final destroy did not leave the domain shut off: {r.Request} → {job}");
        }
        var list = await api.GetAsync("GET domains (final)", "/api/v1/domains", 200);
        if (list.Status != 200) return;
        foreach (var d in list.Read<DomainListView>().Items)
        {
            rec.CheckDomain(d, "after final destroy");
            if (d.State != "shut-off") rec.Fail($"after the final destroy?wait=: {d}");
        }
    }

    /// <summary>
    /// A job holds its domain's gate from before <c>startedAt</c> until after <c>finishedAt</c>, so the
    /// running intervals of one domain's jobs never overlap; and a gate sample taken while a job was
    /// running from before the request until after the answer must name that job as holder.
    /// </summary>
    private static async Task<List<JobView>> CheckJobRecordsAsync(VirtdHttp api, StressRecorder rec, string name, Guid uuid)
    {
        var jobs = await JobsOfAsync(api, rec, name, uuid);
        foreach (var j in jobs)
        {
            if (!j.IsFinal) rec.Fail($"{name}: after the final destroy a job is still {j.State}: {j}");
            if (j.Error?.Code == "internal") rec.Fail($"{name}: job failed with an internal error: {j}");
            if (j.StartedAt is { } s && j.FinishedAt is { } f && f < s) rec.Fail($"{name}: job finished before it started: {j}");
        }
        var ran = jobs.Where(j => j.StartedAt is not null && j.FinishedAt is not null).OrderBy(j => j.StartedAt).ToList();
        for (var i = 1; i < ran.Count; i++)
        {
            if (ran[i].StartedAt < ran[i - 1].FinishedAt)
                rec.Fail($"{name}: two jobs held the gate at once: {ran[i - 1]} and {ran[i]}");
        }
        foreach (var sample in rec.GateSamples.Where(s => s.Domain == name))
        {
            var runner = ran.FirstOrDefault(j => j.StartedAt <= sample.Sent && j.FinishedAt >= sample.Received && j.Id != sample.HolderId);
            if (runner is not null)
                rec.Fail($"{name}: {sample.Source} at {sample.Sent:HH:mm:ss.fffffff}–{sample.Received:HH:mm:ss.fffffff} showed holder " +
                         $"{sample.HolderKind ?? "none"} {sample.HolderId} while {runner} was running");
        }
        return jobs;
    }
}
