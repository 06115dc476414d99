using System.Net.Http.Headers;

namespace Virtd.Soak;

/// <summary>What the clients share: the domains set up before the run and the tokens made for it.</summary>
internal sealed class World
{
    /// <summary>Simulated domains each client owns (sim-000, sim-001 are client 0's, and so on).</summary>
    public const int SimsPerClient = 2;

    public required string[] Sims { get; init; }

    /// <summary>The QEMU VMs: vm-N is client N's.</summary>
    public required string[] Vms { get; init; }

    /// <summary>Simulated domains whose guest ignores SIGTERM (a destroy then waits for its timeout before SIGKILL).</summary>
    public required HashSet<string> IgnoresSigterm { get; init; }

    /// <summary>Simulated domains whose guest ignores the ACPI power button (a shutdown then runs into its timeout).</summary>
    public required HashSet<string> IgnoresAcpi { get; init; }

    public Dictionary<string, string> Uuids { get; } = [];
    public required string ReaderToken { get; init; }
    public required string OperatorToken { get; init; }

    /// <summary>The secret the dashboard-style clients sign in with (POST /api/v1/session).</summary>
    public required string SessionToken { get; init; }

    /// <summary>Each VM's guest, seen through its serial console (when the state directory is known).</summary>
    public Dictionary<string, Guest> Guests { get; } = [];

    private static readonly TimeSpan RestartInterval = TimeSpan.FromSeconds(5);
    private readonly System.Diagnostics.Stopwatch _sinceRestart = System.Diagnostics.Stopwatch.StartNew();
    private bool _restarted;

    /// <summary>
    /// Whether a client may reset, reboot or destroy and start <paramref name="vm"/> now: one such restart every 5 s over
    /// all VMs, of a guest that is up. If so, it is counted as done.
    /// </summary>
    public bool MayRestart(string vm)
    {
        var guest = Guests.GetValueOrDefault(vm);
        lock (_sinceRestart)
        {
            if (_restarted && _sinceRestart.Elapsed < RestartInterval) return false;
            if (guest is not null && !guest.IsUp()) return false;
            _restarted = true;
            _sinceRestart.Restart();
            guest?.Restarting();
            return true;
        }
    }
}

/// <summary>
/// A VM's guest as its serial console shows it (<c>&lt;StateDirectory&gt;/log/&lt;uuid&gt;.console.log</c>). The soak resets,
/// reboots or restarts only a guest that printed its ready line since the soak last did so: under TCG on two busy cores a
/// guest takes seconds of CPU to boot, and the power button of a guest still booting goes unheard, so an ACPI reboot would
/// hold the VM for its whole 60 s timeout (and fail shutdown-timeout), with everything else queued behind.
/// </summary>
internal sealed class Guest(string consoleLog)
{
    private const string ReadyLine = "virtd-test-guest: ready";
    private long _mark;

    /// <summary>The soak is about to make the guest boot again: what the console holds so far is of the previous boot.</summary>
    public void Restarting() => Interlocked.Exchange(ref _mark, Length());

    private volatile bool _booted;

    /// <summary>Whether the guest has printed its ready line at all: its first boot is done.</summary>
    public bool Booted()
    {
        if (_booted) return true;
        try
        {
            using var fs = new FileStream(consoleLog, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return _booted = new StreamReader(fs).ReadToEnd().Contains(ReadyLine, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Whether the guest printed its ready line since the last <see cref="Restarting"/>.</summary>
    public bool IsUp()
    {
        try
        {
            using var fs = new FileStream(consoleLog, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            fs.Seek(Math.Min(Interlocked.Read(ref _mark), fs.Length), SeekOrigin.Begin);
            return new StreamReader(fs).ReadToEnd().Contains(ReadyLine, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private long Length()
    {
        var file = new FileInfo(consoleLog);
        return file.Exists ? file.Length : 0;
    }
}

/// <summary>
/// One of the soak's clients: a closed loop over a weighted random mix of the API, with the daemon's answers judged only
/// by the caller (<see cref="Api"/> counts statuses). It reads anything, but changes only what is its own, as a tenant
/// does: its two simulated domains, the VM it owns (clients 0-9), the temporary domains it defines and undefines, its
/// tokens and its jobs. So what the daemon holds stays the same size over the run, and no client's job waits behind
/// another's (a domain's jobs queue behind each other, and that wait is the client's own doing).
/// </summary>
internal sealed class Client
{
    private readonly (int Weight, Func<Task> Run)[] _mix;
    private readonly int _totalWeight;
    private readonly int _index;
    private readonly Api _api;
    private readonly World _world;
    private readonly JobTracker _jobs;
    private readonly StreamStats _events;
    private readonly string[] _own;
    private readonly string? _vm;
    private readonly Random _rng;
    private readonly List<string> _temporary = [];
    private readonly List<(string Name, string Secret)> _tokens = [];
    private readonly List<(string Path, string? Body, string Key)> _keys = [];
    private readonly Queue<JobTracker.Tracked> _myJobs = new();
    private string? _staleETag;
    private int _n;

    public Client(int index, Api api, World world, JobTracker jobs, StreamStats events)
    {
        _index = index;
        _api = api;
        _world = world;
        _jobs = jobs;
        _events = events;
        _rng = new Random(1000 + index);
        _own = [.. world.Sims.Skip(index * World.SimsPerClient).Take(World.SimsPerClient)];
        _vm = index < world.Vms.Length ? world.Vms[index] : null;
        _mix =
        [
            // Reads, of anything.
            (8, ListDomainsAsync),
            (10, GetDomainAsync),
            (4, GateAsync),
            (2, StatsAsync),
            (1, MetricsAsync),
            (5, ListJobsAsync),
            (6, GetJobAsync),
            (3, HostAsync),
            (3, ProbesAsync),
            (2, WhoAmIAsync),
            (2, ReadTokensAsync),
            (1, ShortStreamAsync),
            // Changes, of its own.
            (28, SimulatedActionAsync),
            (_vm is null ? 0 : 10, VmActionAsync),
            (3, CancelJobAsync),
            (4, UpdateAsync),
            (4, TemporaryDomainAsync),
            (1, TokenLifecycleAsync),
            (1, SessionLifecycleAsync),
            (1, VolumeLifecycleAsync),
            // Requests that must be refused with a 4xx.
            (6, BadRequestAsync),
        ];
        _totalWeight = _mix.Sum(m => m.Weight);
    }

    /// <summary>
    /// Runs the mix while <paramref name="running"/> holds, with a think time between operations drawn uniformly from
    /// 0 to twice <paramref name="thinkMs"/> (0: none, a closed loop as fast as the daemon answers).
    /// </summary>
    public async Task RunAsync(Func<bool> running, int thinkMs)
    {
        while (running())
        {
            var pick = _rng.Next(_totalWeight);
            foreach (var (weight, run) in _mix)
            {
                if ((pick -= weight) >= 0) continue;
                await run().ConfigureAwait(false);
                break;
            }
            if (thinkMs > 0) await Task.Delay(_rng.Next(2 * thinkMs + 1)).ConfigureAwait(false);
        }
        // Leave nothing of this client's behind: its temporary domains and tokens.
        foreach (var name in _temporary.ToList()) await RemoveTemporaryAsync(name, force: true).ConfigureAwait(false);
        foreach (var (name, _) in _tokens) await _api.DeleteAsync(Soak.TokenOp, "/api/v1/tokens/" + name).ConfigureAwait(false);
        await _api.DeleteAsync(Soak.VolumeDeleteOp, $"/api/v1/pools/default/volumes/soak-{_index}.img").ConfigureAwait(false);
    }

    // ---------------- reads ----------------

    private async Task ListDomainsAsync()
    {
        string[] queries = ["", "?state=running", "?driver=qemu", "?state=paused&driver=simulated", "?limit=50", "?state=shut-off&limit=20"];
        var query = queries[_rng.Next(queries.Length)];
        var r = await _api.GetAsync(Soak.DomainsOp, "/api/v1/domains" + query).ConfigureAwait(false);
        // Follow one page further (the cursor in the body, as in the Link header).
        if (r.Status == 200 && r.As(SoakJson.Default.PageDto)?.Next is { } next && query.Contains("limit", StringComparison.Ordinal))
            await _api.GetAsync(Soak.DomainsOp, $"/api/v1/domains{query}&after={Uri.EscapeDataString(next)}").ConfigureAwait(false);
    }

    private async Task GetDomainAsync()
    {
        var name = AnyDomain();
        // By UUID now and then ({id} is a name or a UUID).
        var id = _rng.Next(5) == 0 && _world.Uuids.TryGetValue(name, out var uuid) ? uuid : name;
        var r = await _api.GetAsync(Soak.DomainOp, "/api/v1/domains/" + id).ConfigureAwait(false);
        if (r.ETag is not null) _staleETag ??= r.ETag;
    }

    /// <summary>
    /// The serial console's log as text; the console and VNC routes asked without a WebSocket handshake (400
    /// websocket-required: the soak speaks HTTP only; the WebSockets have their own tests).
    /// </summary>
    private async Task ConsolesAsync()
    {
        var name = AnyDomain();
        await _api.GetAsync(Soak.ConsoleLogOp, $"/api/v1/domains/{name}/console/log?tail=20").ConfigureAwait(false);
        var vnc = _rng.Next(2) == 0;
        await _api.GetAsync(vnc ? Soak.VncOp : Soak.ConsoleOp, $"/api/v1/domains/{name}/{(vnc ? "vnc" : "console")}").ConfigureAwait(false);
    }

    /// <summary>The gate, and one time in four a domain's consoles (inside this entry: the mix's weights stay those of the volume walk's coverage).</summary>
    private async Task GateAsync()
    {
        await _api.GetAsync(Soak.GateOp, $"/api/v1/domains/{AnyDomain()}/gate").ConfigureAwait(false);
        if (_rng.Next(4) == 0) await ConsolesAsync().ConfigureAwait(false);
    }

    private Task StatsAsync() => _rng.Next(4) == 0
        ? _api.GetAsync(Soak.DomainsOp, "/api/v1/domains?include=stats&limit=20")
        : _api.GetAsync(Soak.StatsOp, $"/api/v1/domains/{AnyDomain()}/stats");

    /// <summary>A Prometheus scrape now and then (one in ten of these turns: about one a second in all), as Prometheus's would come in among the other requests.</summary>
    private Task MetricsAsync() => _rng.Next(10) == 0 ? _api.GetAsync(Soak.MetricsOp, "/metrics") : Task.CompletedTask;

    private async Task ListJobsAsync()
    {
        string[] queries = ["?limit=20", $"?domain={AnyDomain()}", "?state=running", "?state=queued&limit=50", "?state=failed&limit=10", "?limit=5"];
        var query = queries[_rng.Next(queries.Length)];
        var r = await _api.GetAsync(Soak.JobsOp, "/api/v1/jobs" + query).ConfigureAwait(false);
        if (r.Status == 200 && r.As(SoakJson.Default.PageDto)?.Next is { } next && query == "?limit=5")
            await _api.GetAsync(Soak.JobsOp, $"/api/v1/jobs?limit=5&after={Uri.EscapeDataString(next)}").ConfigureAwait(false);
    }

    private async Task GetJobAsync()
    {
        if (_jobs.RandomRecent(_rng) is not { } id) return;
        var wait = _rng.Next(3) == 0 ? 1 + _rng.Next(3) : -1;
        var r = await _api.GetAsync(Soak.JobOp, $"/api/v1/jobs/{id}{(wait >= 0 ? $"?wait={wait}" : "")}", waitSeconds: Math.Max(wait, 0)).ConfigureAwait(false);
        _jobs.Seen(r.Job);
    }

    private Task HostAsync() => _api.GetAsync(Soak.HostOp, "/api/v1/host");

    private Task ProbesAsync() => _rng.Next(2) == 0
        ? _api.GetAsync(Soak.HealthzOp, "/healthz", token: Api.Anonymous)
        : _api.GetAsync(Soak.ReadyzOp, "/readyz", token: Api.Anonymous);

    private Task WhoAmIAsync() => _api.GetAsync(Soak.SessionGetOp, "/api/v1/session",
        token: _rng.Next(3) switch { 0 => _world.ReaderToken, 1 => _world.OperatorToken, _ => null });

    private Task ReadTokensAsync() => _rng.Next(3) switch
    {
        0 => _api.GetAsync(Soak.TokensOp, "/api/v1/tokens"),
        1 => _api.GetAsync(Soak.TokenGetOp, "/api/v1/tokens/soak-reader"),
        _ => _api.GetAsync(Soak.TokenGetOp, "/api/v1/tokens/" + (_tokens.Count > 0 ? _tokens[0].Name : "no-such-token")),
    };

    /// <summary>A short stream that resumes from a recent id (a replay) or an ancient one (a resync), reads a little and goes.</summary>
    private async Task ShortStreamAsync()
    {
        var from = _rng.Next(5) == 0 ? 1 : Math.Max(1, _events.LastId - _rng.Next(200));
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/events?types=job.,domain.&lastEventId={from}");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _api.AdminToken);
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(1 + _rng.NextDouble()));
        try
        {
            using var response = await _api.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, deadline.Token).ConfigureAwait(false);
            var status = (int)response.StatusCode;
            _api.Stats.Count(Soak.EventsOp, status);
            if (status >= 500) _api.Stats.ServerError("GET", request.RequestUri!.ToString(), status, await response.Content.ReadAsStringAsync(CancellationToken.None).ConfigureAwait(false));
            if (status != 200) return;
            await using var body = await response.Content.ReadAsStreamAsync(deadline.Token).ConfigureAwait(false);
            using var reader = new StreamReader(body);
            for (var lines = 0; lines < 100 && await reader.ReadLineAsync(deadline.Token).ConfigureAwait(false) is not null; lines++) { }
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            // Read for long enough: hang up mid-stream, as a browser tab does.
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            _api.Stats.NoAnswer("GET", "/api/v1/events (short)", Stats.Describe(e));
        }
    }

    // ---------------- actions ----------------

    /// <summary>
    /// Any action on one of its two simulated domains. A guest that ignores the power button gets no reboot (the daemon
    /// would wait its whole ACPI timeout, 60 s), no guest a shutdown without a short timeout, and one that ignores SIGTERM
    /// no destroy with the default 10 s before SIGKILL: the soak is about load, not about waiting.
    /// </summary>
    private async Task SimulatedActionAsync()
    {
        var name = _own[_rng.Next(_own.Length)];
        var action = Soak.Actions[_rng.Next(Soak.Actions.Length)];
        if (action == "reboot" && _world.IgnoresAcpi.Contains(name)) action = "reset";
        var body = action switch
        {
            "shutdown" => ShutdownBody(),
            "destroy" => DestroyBody(_world.IgnoresSigterm.Contains(name)),
            _ => null,
        };
        var wait = _rng.Next(10) switch { < 4 => -1, < 8 => 5, _ => _rng.Next(3) };
        await ActAsync(name, action, body, wait, idempotencyKey: _rng.Next(10) == 0).ConfigureAwait(false);
    }

    /// <summary>
    /// Its VM stays mostly running: suspend and resume, starts (a no-op unless it was destroyed), and now and then a reset,
    /// an ACPI reboot or a destroy and a start: at most one such restart every 5 s over all VMs, and only of a guest that
    /// is up. A guest's boot costs a TCG VM seconds of CPU, and the two cores are the daemon's too.
    /// </summary>
    private async Task VmActionAsync()
    {
        var vm = _vm!;
        var wait = _rng.Next(2) == 0 ? 10 : -1;
        // Until its guest has booted once, the VM is only started or resumed (a no-op while it runs): a guest paused
        // half the time boots in twice the time, and on a busy machine one took longer than a 20 s run.
        if (_world.Guests.GetValueOrDefault(vm) is { } guest && !guest.Booted())
        {
            await ActAsync(vm, _rng.Next(2) == 0 ? "resume" : "start", null, wait).ConfigureAwait(false);
            return;
        }
        var roll = _rng.Next(100);
        if (roll < 10 && _world.MayRestart(vm))
        {
            switch (_rng.Next(10))
            {
                case < 4: await ActAsync(vm, "reset", null, wait).ConfigureAwait(false); break;
                case < 8:
                    // The power button of a paused guest goes unheard until the reboot's timeout: resume it first (once
                    // this job has ended, nothing of this client's is queued on the VM).
                    await ActAsync(vm, "resume", null, 10).ConfigureAwait(false);
                    await ActAsync(vm, "reboot", null, wait).ConfigureAwait(false);
                    break;
                default:
                    await ActAsync(vm, "destroy", _rng.Next(2) == 0 ? null : Json(new DestroyCommand(false, 5), SoakJson.Default.DestroyCommand), 30).ConfigureAwait(false);
                    await ActAsync(vm, "start", null, 30).ConfigureAwait(false);
                    break;
            }
        }
        else if (roll < 45)
        {
            await ActAsync(vm, "suspend", null, wait).ConfigureAwait(false);
        }
        else if (roll < 90)
        {
            await ActAsync(vm, "resume", null, wait).ConfigureAwait(false);
        }
        else
        {
            await ActAsync(vm, "start", null, wait).ConfigureAwait(false);
        }
    }

    private async Task<Reply> ActAsync(string name, string action, string? body, int wait, bool idempotencyKey = false, string? token = null)
    {
        // A client that fires and forgets keeps at most two jobs of its own not yet ended on a domain, then waits: a
        // domain's jobs run one at a time, and a queue of sixteen 3-s shutdowns is a client's bug, not load.
        if (wait < 0 && _myJobs.Count(j => j.Domain == name && j.State is null) >= 2) wait = 5;
        var path = $"/api/v1/domains/{name}/{action}{(wait >= 0 ? $"?wait={wait}" : "")}";
        string? key = null;
        if (idempotencyKey)
        {
            if (_keys.Count > 0 && _rng.Next(3) == 0)
            {
                // A retry: the same request (the first answer again), or the same key on another request (422).
                var old = _keys[_rng.Next(_keys.Count)];
                key = old.Key;
                if (_rng.Next(4) != 0)
                {
                    path = old.Path;
                    body = old.Body;
                }
            }
            else
            {
                key = $"soak-{_index}-{++_n}";
                _keys.Add((path, body, key));
                if (_keys.Count > 8) _keys.RemoveAt(0);
            }
        }
        var r = await _api.PostAsync(Soak.ActionOp(path.Split('?')[0].Split('/')[^1]), path, body, token: token, waitSeconds: Math.Max(wait, 0),
            configure: key is null ? null : m => m.Headers.Add("Idempotency-Key", key)).ConfigureAwait(false);
        if (_jobs.Submitted(r.Job) is { } job)
        {
            _myJobs.Enqueue(job);
            if (_myJobs.Count > 16) _myJobs.Dequeue();
        }
        return r;
    }

    /// <summary>
    /// Always with a timeout of at most 3 s: a guest that ignores the power button, and any guest while it is paused, would
    /// hold its domain for the default 60 s, and every job queued behind would fail domain-busy after 30 s.
    /// </summary>
    private string ShutdownBody() => _rng.Next(3) switch
    {
        0 => Json(new ShutdownCommand(2, false), SoakJson.Default.ShutdownCommand),
        1 => Json(new ShutdownCommand(1, true), SoakJson.Default.ShutdownCommand),
        _ => Json(new ShutdownCommand(_rng.Next(4), _rng.Next(2) == 0), SoakJson.Default.ShutdownCommand),
    };

    private string? DestroyBody(bool ignoresSigterm) => _rng.Next(4) switch
    {
        0 when !ignoresSigterm => null, // SIGTERM, up to 10 s, SIGKILL
        0 or 1 => Json(new DestroyCommand(false, 1), SoakJson.Default.DestroyCommand),
        2 => Json(new DestroyCommand(true, 1), SoakJson.Default.DestroyCommand),
        _ => Json(new DestroyCommand(false, 0), SoakJson.Default.DestroyCommand),
    };

    private static string Json<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type) => System.Text.Json.JsonSerializer.Serialize(value, type);

    /// <summary>Cancels one of its own recent jobs (202 when queued or cancellable, else 409 job-not-cancellable, or 404 once pruned).</summary>
    private async Task CancelJobAsync()
    {
        if (_myJobs.Count == 0) return;
        var id = _myJobs.ElementAt(_rng.Next(_myJobs.Count)).Id;
        var r = await _api.DeleteAsync(Soak.JobCancelOp, "/api/v1/jobs/" + id, token: _rng.Next(2) == 0 ? _world.OperatorToken : null).ConfigureAwait(false);
        _jobs.Seen(r.Job);
    }

    // ---------------- definitions, tokens, sessions ----------------

    /// <summary>GET, then PUT the definition back with a new description, with its ETag in If-Match (or a stale one: 412, or none).</summary>
    private async Task UpdateAsync()
    {
        var name = _rng.Next(10) switch
        {
            0 when _vm is not null => _vm,
            1 when _temporary.Count > 0 => _temporary[0],
            _ => _own[_rng.Next(_own.Length)],
        };
        var g = await _api.GetAsync(Soak.DomainOp, "/api/v1/domains/" + name).ConfigureAwait(false);
        if (g.Status != 200 || g.As(SoakJson.Default.DomainDto)?.Definition is not { } definition) return;
        definition.Description = $"soak client {_index} update {++_n}";
        if (name.StartsWith("sim-", StringComparison.Ordinal)) definition.MemoryMiB = 64 * (1 + _rng.Next(2));
        var etag = _rng.Next(10) switch { 0 => null, 1 => _staleETag ?? "\"stale\"", _ => g.ETag };
        var r = await _api.SendAsync(Soak.DomainPutOp, HttpMethod.Put, "/api/v1/domains/" + name, Json(definition, SoakJson.Default.DomainDefinition),
            configure: etag is null ? null : m => m.Headers.TryAddWithoutValidation("If-Match", etag)).ConfigureAwait(false);
        if (r.ETag is not null && _rng.Next(4) == 0) _staleETag = g.ETag; // an ETag that has just gone stale
    }

    /// <summary>Defines a domain of this client's own (at most three at once), starts some, and undefines the oldest.</summary>
    private async Task TemporaryDomainAsync()
    {
        if (_temporary.Count < 3 && (_temporary.Count == 0 || _rng.Next(2) == 0))
        {
            var name = $"tmp-{_index}-{++_n}";
            var definition = new DomainDefinition
            {
                Name = name,
                Driver = "simulated",
                Vcpus = 1 + _rng.Next(2),
                MemoryMiB = 64,
                Description = "soak: temporary",
                Simulation = new SimulationConfig(_rng.Next(200), _rng.Next(200), false, false),
            };
            var r = await _api.PostAsync(Soak.DefineOp, "/api/v1/domains", definition, SoakJson.Default.DomainDefinition,
                configure: _rng.Next(5) == 0 ? m => m.Headers.Add("Idempotency-Key", $"soak-define-{name}") : null).ConfigureAwait(false);
            if (r.Status == 201)
            {
                _temporary.Add(name);
                if (_rng.Next(3) == 0) await ActAsync(name, "start", null, 2).ConfigureAwait(false);
            }
            return;
        }
        if (_temporary.Count > 0) await RemoveTemporaryAsync(_temporary[0], force: _rng.Next(3) != 0).ConfigureAwait(false);
    }

    /// <summary>Undefine: at once (409 domain-active if it runs), or after a destroy, with the ETag in If-Match.</summary>
    private async Task RemoveTemporaryAsync(string name, bool force)
    {
        string? etag = null;
        if (force)
        {
            await ActAsync(name, "destroy", null, 10).ConfigureAwait(false);
            etag = (await _api.GetAsync(Soak.DomainOp, "/api/v1/domains/" + name).ConfigureAwait(false)).ETag;
        }
        var r = await _api.DeleteAsync(Soak.UndefineOp, "/api/v1/domains/" + name,
            configure: etag is null ? null : m => m.Headers.TryAddWithoutValidation("If-Match", etag)).ConfigureAwait(false);
        if (r.Status is 204 or 404) _temporary.Remove(name);
    }

    /// <summary>Creates a token (at most two at once) and uses it, or revokes the oldest and sees its secret refused.</summary>
    private async Task TokenLifecycleAsync()
    {
        if (_tokens.Count < 2)
        {
            var name = $"tok-{_index}-{++_n}";
            var role = new[] { "reader", "operator", "admin" }[_rng.Next(3)];
            var expires = _rng.Next(2) == 0 ? (DateTimeOffset?)null : DateTimeOffset.UtcNow.AddHours(1);
            var r = await _api.PostAsync(Soak.TokenCreateOp, "/api/v1/tokens", new CreateTokenRequest(name, role, expires), SoakJson.Default.CreateTokenRequest)
                .ConfigureAwait(false);
            if (r.Status == 201 && r.As(SoakJson.Default.CreatedTokenDto)?.Secret is { } secret)
            {
                _tokens.Add((name, secret));
                await _api.GetAsync(Soak.SessionGetOp, "/api/v1/session", token: secret).ConfigureAwait(false);
            }
            return;
        }
        var (gone, goneSecret) = _tokens[0];
        var d = await _api.DeleteAsync(Soak.TokenOp, "/api/v1/tokens/" + gone).ConfigureAwait(false);
        if (d.Status is 204 or 404)
        {
            _tokens.RemoveAt(0);
            await _api.GetAsync(Soak.HostOp, "/api/v1/host", token: goneSecret).ConfigureAwait(false); // 401 from now on
        }
    }

    /// <summary>
    /// A volume of this client's own, one step per call: the pools and the list, then create (raw, 1 MiB), read, grow,
    /// upload 64 KiB over it, download it, delete it.
    /// </summary>
    private async Task VolumeLifecycleAsync()
    {
        const string Volumes = "/api/v1/pools/default/volumes";
        var name = $"soak-{_index}.img";
        var step = _volumeStep++ % 7;
        switch (step)
        {
            case 0:
                await _api.GetAsync(Soak.PoolsOp, "/api/v1/pools").ConfigureAwait(false);
                await _api.GetAsync(Soak.PoolOp, "/api/v1/pools/default").ConfigureAwait(false);
                await _api.GetAsync(Soak.VolumesOp, Volumes).ConfigureAwait(false);
                break;
            case 1:
                await _api.PostAsync(Soak.VolumeCreateOp, Volumes, $"{{\"name\":\"{name}\",\"format\":\"raw\",\"capacity\":\"1MiB\"}}").ConfigureAwait(false);
                break;
            case 2:
                await _api.GetAsync(Soak.VolumeOp, $"{Volumes}/{name}").ConfigureAwait(false);
                break;
            case 3:
                await _api.PostAsync(Soak.VolumeResizeOp, $"{Volumes}/{name}/resize", "{\"capacity\":\"2MiB\"}").ConfigureAwait(false);
                break;
            case 4:
                await _api.SendAsync(Soak.VolumeUploadOp, HttpMethod.Put, $"{Volumes}/{name}/content?format=raw",
                    configure: m => m.Content = new ByteArrayContent(new byte[64 * 1024])).ConfigureAwait(false);
                break;
            case 5:
                await _api.GetAsync(Soak.VolumeDownloadOp, $"{Volumes}/{name}/content").ConfigureAwait(false);
                break;
            default:
                await _api.DeleteAsync(Soak.VolumeDeleteOp, $"{Volumes}/{name}").ConfigureAwait(false);
                break;
        }
    }

    private int _volumeStep;

    /// <summary>The dashboard's way in: sign in with a token (cookie), who am I with the cookie alone, sign out.</summary>
    private async Task SessionLifecycleAsync()
    {
        var r = await _api.PostAsync(Soak.SessionPostOp, "/api/v1/session", new SessionRequest(_world.SessionToken), SoakJson.Default.SessionRequest, token: Api.Anonymous)
            .ConfigureAwait(false);
        if (r.Status != 204 || r.SetCookie?.Split(';')[0] is not { } cookie) return;
        await _api.GetAsync(Soak.SessionGetOp, "/api/v1/session", token: Api.Anonymous).ConfigureAwait(false); // no cookie, no token: 401
        await _api.SendAsync(Soak.SessionGetOp, HttpMethod.Get, "/api/v1/session", token: Api.Anonymous,
            configure: m => m.Headers.Add("Cookie", cookie)).ConfigureAwait(false);
        // A change made with the cookie carries Content-Type: application/json (CSRF).
        await _api.SendAsync(Soak.SessionDeleteOp, HttpMethod.Delete, "/api/v1/session", "", token: Api.Anonymous,
            configure: m => m.Headers.Add("Cookie", cookie)).ConfigureAwait(false);
    }

    // ---------------- refusals ----------------

    private Task BadRequestAsync()
    {
        var sim = _own[_rng.Next(_own.Length)];
        var other = _world.Sims[_rng.Next(_world.Sims.Length)];
        var unknown = $"no-such-domain-{_rng.Next(1000)}";
        return _rng.Next(24) switch
        {
            0 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", """{"name":"-bad name","memoryMiB":4}"""),
            1 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", """{"name":"x","memoryMiB":"""),
            2 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", """{"name":"y","memoryMiB":64,"colour":"blue"}"""),
            3 => _api.SendAsync(Soak.DefineOp, HttpMethod.Post, "/api/v1/domains", "name=z", contentType: "text/plain"),
            4 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", new DomainDefinition { Name = other, Driver = "simulated", MemoryMiB = 64 },
                SoakJson.Default.DomainDefinition), // 409 domain-exists
            5 => ActAsync(unknown, Soak.Actions[_rng.Next(Soak.Actions.Length)], null, -1),
            6 => _api.GetAsync(Soak.DomainOp, "/api/v1/domains/" + (_rng.Next(2) == 0 ? unknown : Guid.NewGuid().ToString())),
            7 => _api.GetAsync(Soak.JobOp, "/api/v1/jobs/" + (_rng.Next(2) == 0 ? Guid.NewGuid().ToString() : "not-a-job-id")),
            8 => _api.GetAsync(Soak.JobsOp, "/api/v1/jobs?state=bogus"),
            9 => _api.GetAsync(Soak.DomainsOp, "/api/v1/domains?limit=10&after=bm90IGEgY3Vyc29y"),
            10 => _api.PostAsync(Soak.ActionOp("start"), $"/api/v1/domains/{sim}/start?wait={(_rng.Next(2) == 0 ? 999 : -5)}", null),
            11 => ActAsync(sim, "shutdown", """{"timeout":-5}""", -1),
            12 => ActAsync(sim, "destroy", _rng.Next(2) == 0 ? Json(new DestroyCommand(false, 1000), SoakJson.Default.DestroyCommand)
                : Json(new DestroyWithSignal("KILL"), SoakJson.Default.DestroyWithSignal), -1),
            // Undefine another's domain with an ETag it never had: 412, whatever state the domain is in.
            13 => _api.DeleteAsync(Soak.UndefineOp, "/api/v1/domains/" + other, configure: m => m.Headers.TryAddWithoutValidation("If-Match", "\"soak-not-an-etag\"")),
            14 => _api.GetAsync(Soak.HostOp, "/api/v1/host", token: _rng.Next(2) == 0 ? Api.Anonymous : "virtd_not-a-real-secret"),
            15 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", """{"name":"by-a-reader","memoryMiB":64}""", token: _world.ReaderToken), // 403
            16 => ActAsync(sim, "suspend", null, -1, token: _world.ReaderToken), // 403: reader
            17 => _api.GetAsync("GET /api/v1/no-such-route", "/api/v1/no-such-route"),
            18 => _api.GetAsync(Soak.EventsOp, "/api/v1/events?lastEventId=not-a-number"),
            19 => _api.PostAsync(Soak.TokenCreateOp, "/api/v1/tokens", """{"name":"bad role","role":"emperor"}"""),
            20 => _api.DeleteAsync(Soak.JobCancelOp, "/api/v1/jobs/" + Guid.NewGuid()),
            // 413, asked as a careful client asks before a large upload: "Expect: 100-continue" gets the 413 before the body
            // is sent, and "Connection: close" because the daemon closes the connection after its 413 without saying so (no
            // "Connection: close" in the answer), so a client that reuses it fails its next request. Without them, the
            // daemon answers while the body is still being sent and drops the connection: the client gets a broken pipe.
            21 => _api.PostAsync(Soak.DefineOp, "/api/v1/domains", $$"""{"name":"huge","description":"{{new string('x', 1_100_000)}}"}""",
                configure: m =>
                {
                    m.Headers.ExpectContinue = true;
                    m.Headers.ConnectionClose = true;
                }),
            22 => _api.SendAsync("PATCH /api/v1/domains/{id}", HttpMethod.Patch, "/api/v1/domains/" + other, "{}"), // 405
            _ => _api.SendAsync(Soak.HostOp, HttpMethod.Get, "/api/v1/host", configure: m => m.Headers.Host = "evil.example"), // 400 host-not-allowed
        };
    }

    private string AnyDomain() => _rng.Next(10) switch
    {
        0 => _world.Vms[_rng.Next(_world.Vms.Length)],
        1 when _temporary.Count > 0 => _temporary[_rng.Next(_temporary.Count)],
        _ => _world.Sims[_rng.Next(_world.Sims.Length)],
    };
}
