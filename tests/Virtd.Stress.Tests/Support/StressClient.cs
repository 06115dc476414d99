using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace Virtd.Stress.Tests.Support;

/// <summary>
/// One client: picks a random domain and a random operation, again and again, as fast as the
/// daemon answers, until told to stop. Every answer is checked as it arrives (see <see cref="VirtdHttp"/>).
/// </summary>
public sealed class StressClient(VirtdHttp api, StressRecorder rec, IReadOnlyList<string> domains, int seed)
{
    private readonly Random _rng = new(seed);
    private readonly List<(Guid Id, string Domain)> _myJobs = [];

    private static readonly (int Weight, string Op)[] Ops =
    [
        (14, "start"), (11, "shutdown"), (5, "reboot"), (5, "reset"), (8, "suspend"), (8, "resume"), (6, "destroy"),
        (12, "get"), (4, "list"), (9, "gate"), (10, "job"), (3, "jobs"), (2, "cancel"), (3, "put"),
    ];

    private static readonly int TotalWeight = Ops.Sum(o => o.Weight);

    public async Task RunAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            var domain = domains[_rng.Next(domains.Count)];
            await OneAsync(Pick(), domain);
        }
    }

    private string Pick()
    {
        var n = _rng.Next(TotalWeight);
        foreach (var (w, op) in Ops)
        {
            if (n < w) return op;
            n -= w;
        }
        throw new InvalidOperationException("unreachable");
    }

    private Task OneAsync(string op, string domain) => op switch
    {
        "shutdown" => ActionAsync(domain, "shutdown", new { timeout = _rng.Next(2), force = _rng.Next(3) == 0 }),
        "destroy" => ActionAsync(domain, "destroy", new { graceful = _rng.Next(3) == 0, timeout = _rng.Next(2) }),
        "start" or "reboot" or "reset" or "suspend" or "resume" => ActionAsync(domain, op, null),
        "get" => GetDomainAsync(domain),
        "list" => ListAsync(),
        "gate" => GateAsync(domain),
        "job" => PollJobAsync(),
        "jobs" => ListJobsAsync(domain),
        "cancel" => CancelAsync(),
        "put" => UpdateAsync(domain),
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, null),
    };

    /// <summary>POST an action, half the time with <c>?wait=</c>: 202/200 with the job, or 409 invalid-state.</summary>
    private async Task ActionAsync(string domain, string action, object? body)
    {
        var wait = _rng.Next(4) switch { 0 => "?wait=1", 1 => "?wait=2", _ => "" };
        var r = await api.PostAsync($"POST {action}", $"/api/v1/domains/{domain}/{action}{wait}", body, 200, 202, 409);
        if (r.Status is 200 or 202)
        {
            var job = r.Read<JobView>();
            rec.Accept(job, domain, action, r.Received);
            Remember(job.Id, domain);
            if (r.Status == 200 && !job.IsFinal) rec.Fail($"200 to ?wait= with an unfinished job: {r}");
            if (r.Status == 202 && r.Location != $"/api/v1/jobs/{job.Id}") rec.Fail($"202 whose Location is not the job's: {r.Location} for {job.Id}");
            if (r.Status == 202 && wait.Length > 0 && job.IsFinal) rec.Fail($"202 to ?wait= for a job that had finished: {r}");
        }
        else if (r.Status == 409 && r.ProblemCode != "invalid-state")
        {
            rec.Fail($"an action was refused with 409 other than invalid-state: {r}");
        }
    }

    private async Task GetDomainAsync(string domain)
    {
        var r = await api.GetAsync("GET domain", $"/api/v1/domains/{domain}", 200);
        if (r.Status != 200) return;
        var d = r.Read<DomainView>();
        rec.CheckDomain(d, "GET domain");
        rec.GateSamples.Enqueue(new GateSample(domain, r.Sent, r.Received, d.CurrentJob?.Id, d.CurrentJob?.Kind, "currentJob"));
    }

    private async Task ListAsync()
    {
        var running = _rng.Next(3) == 0;
        var r = await api.GetAsync("GET domains", running ? "/api/v1/domains?state=running" : "/api/v1/domains", 200);
        if (r.Status != 200) return;
        var list = r.Read<DomainListView>();
        if (list.Count != list.Items.Count) rec.Fail($"list count {list.Count} but {list.Items.Count} items");
        if (!running && list.Count != domains.Count) rec.Fail($"list of all domains has {list.Count}, not {domains.Count}");
        foreach (var d in list.Items)
        {
            rec.CheckDomain(d, "GET domains");
            if (running && d.State != "running") rec.Fail($"?state=running listed {d}");
        }
    }

    private async Task GateAsync(string domain)
    {
        var r = await api.GetAsync("GET gate", $"/api/v1/domains/{domain}/gate", 200);
        if (r.Status != 200) return;
        var g = r.Read<GateView>();
        rec.GateSamples.Enqueue(new GateSample(domain, r.Sent, r.Received, g.Holder?.Id, g.Holder?.Kind, "gate"));
        if (g.Holder is { } h && g.Queued.Any(q => q.Id == h.Id)) rec.Fail($"gate of {domain}: holder {h.Id} is also queued");
        if (g.Queued.Select(q => q.Id).Distinct().Count() != g.Queued.Count) rec.Fail($"gate of {domain}: a job is queued twice");
        if (g.Holder is { AgeSeconds: < 0 } || g.Queued.Any(q => q.AgeSeconds < 0)) rec.Fail($"gate of {domain}: negative age: {r.Body}");
    }

    private async Task PollJobAsync()
    {
        if (_myJobs.Count == 0) return;
        var (id, domain) = _myJobs[_rng.Next(_myJobs.Count)];
        var r = await api.GetAsync("GET job", $"/api/v1/jobs/{id}?wait={_rng.Next(2)}", 200);
        if (r.Status != 200) return;
        var job = r.Read<JobView>();
        if (job.Id != id || job.Domain != domain) rec.Fail($"GET job {id} of {domain} answered {job}");
        if (job.IsFinal != job.FinishedAt.HasValue) rec.Fail($"job {job}: final state and finishedAt disagree");
    }

    private async Task ListJobsAsync(string domain)
    {
        var r = await api.GetAsync("GET jobs", $"/api/v1/jobs?domain={domain}&limit=20", 200);
        if (r.Status != 200) return;
        var list = r.Read<JobListView>();
        if (list.Items.Any(j => j.Domain != domain)) rec.Fail($"GET jobs?domain={domain} listed another domain's job");
    }

    /// <summary>Cancel one of this client's jobs: 202, or 409 once it finished or when it cannot be cancelled.</summary>
    private async Task CancelAsync()
    {
        if (_myJobs.Count == 0) return;
        var (id, _) = _myJobs[_rng.Next(_myJobs.Count)];
        var r = await api.SendAsync("DELETE job", () => new HttpRequestMessage(HttpMethod.Delete, $"/api/v1/jobs/{id}"), 202, 409);
        if (r.Status == 409 && r.ProblemCode is not ("invalid-state" or "job-not-cancellable"))
            rec.Fail($"cancel refused with an unexpected code: {r}");
    }

    /// <summary>
    /// Replace the definition (new description, same everything else) with If-Match: an inline job
    /// under the gate. 200, 412 if another client changed it meanwhile, or 409 domain-busy.
    /// </summary>
    private async Task UpdateAsync(string domain)
    {
        var get = await api.GetAsync("GET domain (for PUT)", $"/api/v1/domains/{domain}", 200);
        if (get.Status != 200) return;
        var definition = JsonNode.Parse(get.Body)!["definition"]!.AsObject();
        definition["description"] = $"stress revision {_rng.Next()}";
        var r = await api.SendAsync("PUT domain", () =>
        {
            var m = new HttpRequestMessage(HttpMethod.Put, $"/api/v1/domains/{domain}") { Content = JsonContent.Create(definition) };
            m.Headers.TryAddWithoutValidation("If-Match", get.ETag);
            return m;
        }, 200, 409, 412);
        if (r.Status == 409 && r.ProblemCode != "domain-busy") rec.Fail($"PUT refused with 409 other than domain-busy: {r}");
        if (r.Status == 412 && r.ProblemCode != "etag-mismatch") rec.Fail($"PUT refused with 412 other than etag-mismatch: {r}");
    }

    private void Remember(Guid id, string domain)
    {
        if (_myJobs.Count >= 64) _myJobs.RemoveAt(_rng.Next(_myJobs.Count));
        _myJobs.Add((id, domain));
    }
}
