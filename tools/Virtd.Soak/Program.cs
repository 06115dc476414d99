using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

// The soak of issue 14 against a running virtd (scripts/soak starts one and runs this):
//   virtd-soak --url URL --token-file FILE --pid PID --kernel K --initrd I --run-directory DIR --state DIR
//              [--seconds 20] [--warmup 10] [--clients 100] [--think-ms 200] [--streams 20] [--vms 10] [--openapi openapi/virtd.v1.json]
// --run-directory is the daemon's RunDirectory (its QEMU processes carry it in VIRTD_RUN_DIRECTORY); --state its
// StateDirectory (the VMs' serial consoles, read to reboot only guests that are up).
// Exit code 0 when it passed, 1 when it failed, 2 for bad arguments.
return await Virtd.Soak.Soak.MainAsync(args);

namespace Virtd.Soak
{
    internal sealed record Options(Uri Url, string TokenFile, int Pid, string Kernel, string Initrd, string RunDirectory, string StateDirectory,
        int Seconds, int WarmUp, int Clients, int ThinkMs, int Streams, int Vms, string? OpenApi)
    {
        public const string Usage = "usage: virtd-soak --url URL --token-file FILE --pid PID --kernel K --initrd I --run-directory DIR --state DIR " +
                                    "[--seconds 20] [--warmup 10] [--clients 100] [--think-ms 200] [--streams 20] [--vms 10] [--openapi FILE]";

        public static Options Parse(string[] args)
        {
            var v = new Dictionary<string, string>();
            for (var i = 0; i < args.Length; i++)
            {
                if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length) throw new ArgumentException($"unexpected argument '{args[i]}'");
                v[args[i][2..]] = args[++i];
            }
            string Need(string k) => v.TryGetValue(k, out var s) ? s : throw new ArgumentException($"--{k} is required");
            int Int(string k, int d, int min) => v.TryGetValue(k, out var s)
                ? int.Parse(s, CultureInfo.InvariantCulture) is var n && n >= min ? n : throw new ArgumentException($"--{k} must be at least {min}")
                : d;
            return new Options(new Uri(Need("url")), Need("token-file"), int.Parse(Need("pid"), CultureInfo.InvariantCulture), Need("kernel"), Need("initrd"),
                Need("run-directory"), Need("state"), Int("seconds", 20, 5), Int("warmup", 10, 5), Int("clients", 100, 1), Int("think-ms", 200, 0), Int("streams", 20, 2), Int("vms", 10, 0),
                v.GetValueOrDefault("openapi"));
        }
    }

    /// <summary>
    /// Issue 14's soak: <c>--clients</c> (100) clients in a closed loop over a realistic mix of the API, each changing only
    /// its own domains, <c>--vms</c> (10) real QEMU VMs (the test guest, TCG) with actions on them, and <c>--streams</c>
    /// (20) event streams, one of them never reading, for a warm-up (<c>--warmup</c>, 10 s, and 5,000 requests, at most
    /// 60 s: the guests boot during it) and then <c>--seconds</c>. Each client thinks 0-400 ms between operations
    /// (<c>--think-ms</c>, 200 on average): a sustained load the two cores carry (~500 requests/s), not a stress test that
    /// saturates them and makes the thread pool inject threads and the GC grow its heap for as long as it lasts.
    /// <para>
    /// It passes when no answer is a 5xx, every request got an answer within its deadline, every job ended (each is followed
    /// to its end), no job is left queued or running, every endpoint of the OpenAPI document was exercised, event ids only
    /// increase, every VM is shut off and no QEMU of the daemon's run directory is left after the soak destroys them; and
    /// the daemon's RSS, threads and open file descriptors at the end are within 10 % (threads: or 4, fds: or 16, whichever
    /// is more) of their value at the end of the warm-up. Only growth fails: a fall is no leak.
    /// </para>
    /// <para>
    /// The warm-up sample is taken under load. The end sample is taken once the clients have stopped, every job has ended
    /// and the daemon is idle (under 5 % of a CPU over a second, at least 3 s after the last request; at most 20 s), with
    /// the event streams, the clients' connections and the VMs still there, as at the warm-up. What scripts/soak gives
    /// the daemon so that these samples measure leaks and not warm-up or a busy machine is said there.
    /// </para>
    /// </summary>
    internal static class Soak
    {
        public const string DomainsOp = "GET /api/v1/domains";
        public const string DefineOp = "POST /api/v1/domains";
        public const string DomainOp = "GET /api/v1/domains/{id}";
        public const string DomainPutOp = "PUT /api/v1/domains/{id}";
        public const string UndefineOp = "DELETE /api/v1/domains/{id}";
        public const string GateOp = "GET /api/v1/domains/{id}/gate";
        public const string ConsoleOp = "GET /api/v1/domains/{id}/console";
        public const string ConsoleLogOp = "GET /api/v1/domains/{id}/console/log";
        public const string VncOp = "GET /api/v1/domains/{id}/vnc";
        public const string StatsOp = "GET /api/v1/domains/{id}/stats";
        public const string MetricsOp = "GET /metrics";
        public const string JobsOp = "GET /api/v1/jobs";
        public const string JobOp = "GET /api/v1/jobs/{jobId}";
        public const string JobCancelOp = "DELETE /api/v1/jobs/{jobId}";
        public const string EventsOp = "GET /api/v1/events";
        public const string HostOp = "GET /api/v1/host";
        public const string HealthzOp = "GET /healthz";
        public const string ReadyzOp = "GET /readyz";
        public const string TokensOp = "GET /api/v1/tokens";
        public const string TokenCreateOp = "POST /api/v1/tokens";
        public const string TokenGetOp = "GET /api/v1/tokens/{name}";
        public const string TokenOp = "DELETE /api/v1/tokens/{name}";
        public const string SessionPostOp = "POST /api/v1/session";
        public const string SessionGetOp = "GET /api/v1/session";
        public const string SessionDeleteOp = "DELETE /api/v1/session";
        public const string PoolsOp = "GET /api/v1/pools";
        public const string PoolOp = "GET /api/v1/pools/{pool}";
        public const string VolumesOp = "GET /api/v1/pools/{pool}/volumes";
        public const string VolumeCreateOp = "POST /api/v1/pools/{pool}/volumes";
        public const string VolumeOp = "GET /api/v1/pools/{pool}/volumes/{volume}";
        public const string VolumeDeleteOp = "DELETE /api/v1/pools/{pool}/volumes/{volume}";
        public const string VolumeResizeOp = "POST /api/v1/pools/{pool}/volumes/{volume}/resize";
        public const string VolumeUploadOp = "PUT /api/v1/pools/{pool}/volumes/{volume}/content";
        public const string VolumeDownloadOp = "GET /api/v1/pools/{pool}/volumes/{volume}/content";

        public static readonly string[] Actions = ["start", "shutdown", "reboot", "reset", "suspend", "resume", "destroy"];

        /// <summary>Growth allowed from the warm-up to the end: 10 %, or this much when that is more (a few threads or fds are noise).</summary>
        private const double Tolerance = 0.10;
        private const double RssSlackMiB = 0;
        private const int ThreadSlack = 4;
        private const int FdSlack = 16;

        /// <summary>Requests the warm-up lasts at least (besides --warmup seconds), and how long it may take at most.</summary>
        private const int WarmUpRequests = 5000;
        private static readonly TimeSpan WarmUpMax = TimeSpan.FromSeconds(60);

        /// <summary>How long the clients may take to finish what they are doing after the run (a request's own deadline is 60 s).</summary>
        private static readonly TimeSpan ClientsStopWithin = TimeSpan.FromSeconds(90);

        /// <summary>How long every job may take to end after the clients have stopped.</summary>
        private static readonly TimeSpan JobsEndWithin = TimeSpan.FromSeconds(60);

        public static string ActionOp(string action) => "POST /api/v1/domains/{id}/" + action;

        public static async Task<int> MainAsync(string[] args)
        {
            Options o;
            try
            {
                o = Options.Parse(args);
            }
            catch (Exception e) when (e is ArgumentException or FormatException or UriFormatException)
            {
                Console.Error.WriteLine($"virtd-soak: {e.Message}");
                Console.Error.WriteLine(Options.Usage);
                return 2;
            }
            try
            {
                return await RunAsync(o).ConfigureAwait(false);
            }
            catch (SetupException e)
            {
                Console.WriteLine($"soak: FAIL (setup: {e.Message})");
                return 1;
            }
        }

        private static async Task<int> RunAsync(Options o)
        {
            // The setup, the event streams and the checks share a pool of connections; each client has one of its own.
            using var http = Api.Connect(o.Url, 1024);
            var stats = new Stats();
            var api = new Api(http, stats, (await File.ReadAllTextAsync(o.TokenFile).ConfigureAwait(false)).Trim());
            var jobs = new JobTracker();
            var events = new StreamStats();
            var failures = new List<string>();

            Console.WriteLine($"== setup: {o.Vms} QEMU VMs (the test guest), {o.Clients * World.SimsPerClient} simulated domains, tokens; daemon pid {o.Pid}");
            var setupClock = Stopwatch.StartNew();
            var world = await SetUpAsync(api, jobs, o).ConfigureAwait(false);
            Console.WriteLine($"   done in {setupClock.Elapsed.TotalSeconds:0.0} s");

            // Event streams: the job tracker, the silent one, and readers with assorted filters.
            using var streamStop = new CancellationTokenSource();
            var tracker = new EventReader(api, events, jobs, "?types=job.finished", 1);
            string[] queries =
            [
                "", "", "", "?types=domain.", "?types=job.", "?types=domain.lifecycle", "?domain=vm-0,vm-1,vm-2",
                "?domain=sim-000&domain=sim-001&domain=vm-3", "?types=job.finished,domain.lifecycle", "?domain=vm-4&types=domain.",
                "?types=daemon.,domain.defined,domain.undefined", "?domain=sim-042,sim-007", "?types=job.queued", "?types=domain.updated",
                "?domain=vm-5,vm-6,vm-7,vm-8,vm-9", "?types=job.started", "?domain=sim-100,sim-101,sim-102", "?types=domain.,job.finished",
            ];
            var readers = new List<EventReader> { tracker };
            for (var i = 0; readers.Count < o.Streams - 1; i++) readers.Add(new EventReader(api, events, null, queries[i % queries.Length], 100 + i));
            var silent = new SilentStream(api);
            await silent.OpenAsync().ConfigureAwait(false);
            var streaming = readers.Select(r => Task.Run(() => r.RunAsync(streamStop.Token))).ToList();
            await PollAsync(() => events.Connects >= readers.Count, TimeSpan.FromSeconds(30), $"{readers.Count} event streams to open").ConfigureAwait(false);

            // The load: the warm-up, then the run proper.
            Console.WriteLine($"== load: {o.Clients} clients (think time 0-{2 * o.ThinkMs} ms), {o.Streams} event streams (1 never reading), {o.Vms} VMs: a warm-up of {o.WarmUp} s, then {o.Seconds} s");
            var clock = Stopwatch.StartNew();
            var sampler = new Sampler(o.Pid, clock);
            using var samplerStop = new CancellationTokenSource();
            var sampling = sampler.RunAsync(samplerStop.Token);
            var stopAt = new StopTime();
            var setupRequests = stats.Total;
            // Each client's connection stays open until the end sample, as at the warm-up.
            var connections = Enumerable.Range(0, o.Clients).Select(_ => api.OwnConnection()).ToList();
            var clients = Enumerable.Range(0, o.Clients)
                .Select(i => Task.Run(() => new Client(i, connections[i], world, jobs, events).RunAsync(() => stopAt.Before(clock.Elapsed), o.ThinkMs))).ToList();
            var all = Task.WhenAll(clients);
            Sample? warm;
            long warmRequests;
            long[] warmLatency;
            long runRequests;
            long[] runLatency;
            double runSeconds;
            using (var progressStop = new CancellationTokenSource())
            {
                var progress = ProgressAsync(stats, jobs, events, sampler, clock, progressStop.Token);
                // The warm-up: --warmup seconds of load and WarmUpRequests answered, within WarmUpMax. The ten guests boot
                // meanwhile, taking the two cores for seconds of TCG each, and the daemon answers fewer requests a second
                // while they do; counting requests keeps the warm-up long enough on a busy machine.
                await Task.Delay(TimeSpan.FromSeconds(o.WarmUp)).ConfigureAwait(false);
                if (!await PollAsync(() => stats.Total - setupRequests >= WarmUpRequests, WarmUpMax - TimeSpan.FromSeconds(o.WarmUp)).ConfigureAwait(false))
                    Console.WriteLine($"   (fewer than {WarmUpRequests} requests in {WarmUpMax.TotalSeconds:0} s: the warm-up ends at its bound)");
                (warm, warmRequests, warmLatency) = (sampler.Take(), stats.Total - setupRequests, stats.Latency.Snapshot());
                var warmAt = clock.Elapsed.TotalSeconds;
                Console.WriteLine($"   warm-up done: t={warmAt:0.0} s, {warmRequests} requests; daemon RSS {warm?.RssMiB ?? 0:0.0} MiB, " +
                                  $"{warm?.Threads ?? 0} threads, {warm?.Fds ?? 0} fds");
                stopAt.Set(TimeSpan.FromSeconds(warmAt + o.Seconds));
                await Task.Delay(TimeSpan.FromSeconds(o.Seconds)).ConfigureAwait(false);
                runSeconds = clock.Elapsed.TotalSeconds - warmAt;
                runRequests = stats.Total - setupRequests - warmRequests;
                runLatency = LatencyHistogram.Between(warmLatency, stats.Latency.Snapshot());
                var stopping = Stopwatch.StartNew();
                if (await Task.WhenAny(all, Task.Delay(ClientsStopWithin)).ConfigureAwait(false) != all)
                    failures.Add($"the clients did not stop within {ClientsStopWithin.TotalSeconds:0} s of the end of the run");
                Console.WriteLine($"   clients stopped {stopping.Elapsed.TotalSeconds:0.0} s after the run (each finishes what it is doing, then undefines its temporary domains)");
                await progressStop.CancelAsync().ConfigureAwait(false);
                await progress.ConfigureAwait(false);
                if (all.IsFaulted) failures.Add("a client failed: " + all.Exception!.GetBaseException());
            }

            // Every job ends: the ones not yet seen ending are long-polled, within a deadline.
            var loadEnded = Stopwatch.StartNew();
            var drainClock = Stopwatch.StartNew();
            var open = jobs.Unfinished();
            var notEnded = await DrainAsync(api, jobs, JobsEndWithin).ConfigureAwait(false);
            var queued = await CountAsync(api, "/api/v1/jobs?state=queued").ConfigureAwait(false);
            var running = await CountAsync(api, "/api/v1/jobs?state=running").ConfigureAwait(false);
            Console.WriteLine($"   jobs ended {drainClock.Elapsed.TotalSeconds:0.0} s later ({open.Count} not yet seen ending when the clients stopped: " +
                              $"{string.Join(", ", open.GroupBy(j => j.Kind).Select(g => $"{g.Key} {g.Count()}"))})");

            // The end sample, once the daemon is idle.
            var settleClock = Stopwatch.StartNew();
            var settled = await SettleAsync(sampler, loadEnded).ConfigureAwait(false);
            var end = sampler.Take();
            Console.WriteLine($"   end sample {settleClock.Elapsed.TotalSeconds:0.0} s later ({(settled ? "daemon idle" : "the daemon did NOT become idle within 20 s")})");
            await samplerStop.CancelAsync().ConfigureAwait(false);
            await sampling.ConfigureAwait(false);
            foreach (var c in connections) c.Http.Dispose();

            var silentVerdict = await silent.VerdictAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            await streamStop.CancelAsync().ConfigureAwait(false);
            if (await Task.WhenAny(Task.WhenAll(streaming), Task.Delay(TimeSpan.FromSeconds(30))).ConfigureAwait(false) is var done && !done.IsCompleted)
                failures.Add("the event readers did not stop within 30 s");

            // Every VM ran the test guest: it printed its ready line at least once.
            var unbooted = world.Guests.Where(g => !g.Value.Booted()).Select(g => g.Key).Order(StringComparer.Ordinal).ToList();
            if (unbooted.Count > 0) failures.Add($"the test guest never printed its ready line in {string.Join(", ", unbooted)} (see its serial console log)");

            // Every VM destroyed, and no QEMU of this daemon left.
            var vmVerdict = await DestroyVmsAsync(api, world, o.RunDirectory, failures).ConfigureAwait(false);

            // ---------------- report ----------------
            Console.WriteLine();
            Console.WriteLine($"== summary: {warm?.Seconds ?? 0:0} s of warm-up + {o.Seconds} s, {o.Clients} clients, {o.Streams} event streams (1 never reading), " +
                              $"{world.Sims.Length} simulated domains, {o.Vms} QEMU VMs, {Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
            var counts = stats.Snapshot();
            long Class(int lo, int hi) => counts.Where(c => c.Key.Status >= lo && c.Key.Status < hi).Sum(c => c.Value);
            Console.WriteLine($"requests: {stats.Total} in all; after the warm-up {runRequests} in {runSeconds:0.0} s = {runRequests / runSeconds:0} req/s, " +
                              $"p50 {LatencyHistogram.PercentileMs(runLatency, 0.50):0.0} ms, p99 {LatencyHistogram.PercentileMs(runLatency, 0.99):0.0} ms " +
                              $"(requests without ?wait=; the warm-up's: {warmRequests} requests, p50 {LatencyHistogram.PercentileMs(warmLatency, 0.50):0.0} ms, " +
                              $"p99 {LatencyHistogram.PercentileMs(warmLatency, 0.99):0.0} ms)");
            Console.WriteLine($"  by class: 2xx {Class(200, 300)}, 3xx {Class(300, 400)}, 4xx {Class(400, 500)}, 5xx {Class(500, 600)}, no answer {Class(0, 1)}");
            Console.WriteLine("  by status: " + string.Join(", ", counts.GroupBy(c => c.Key.Status).OrderBy(g => g.Key)
                .Select(g => $"{(g.Key == 0 ? "none" : g.Key.ToString(CultureInfo.InvariantCulture))} {g.Sum(c => c.Value)}")));
            Console.WriteLine("  by endpoint (mean and longest time to the answer, ?wait= included; status:count):");
            foreach (var op in counts.GroupBy(c => c.Key.Op).OrderBy(g => g.Key, StringComparer.Ordinal))
                Console.WriteLine($"    {op.Key,-38} {stats.MeanMs(op.Key),6:0} ms {stats.MaxSeconds(op.Key),5:0.0} s  " + string.Join(" ", op.OrderBy(c => c.Key.Status)
                    .Select(c => $"{(c.Key.Status == 0 ? "none" : c.Key.Status.ToString(CultureInfo.InvariantCulture))}:{c.Value}")));
            if (o.OpenApi is not null)
            {
                var missing = Endpoints(o.OpenApi).Where(e => !counts.Keys.Any(k => k.Op == e)).ToList();
                Console.WriteLine($"  endpoints of {Path.GetFileName(o.OpenApi)} not exercised: {(missing.Count == 0 ? "none" : string.Join(", ", missing))}");
                if (missing.Count > 0) failures.Add($"{missing.Count} endpoints never exercised");
            }
            if (stats.ServerErrors > 0)
            {
                failures.Add($"{stats.ServerErrors} answers were 5xx");
                Console.WriteLine("  5xx answers (the first few):");
                foreach (var e in stats.ServerErrorSamples) Console.WriteLine("    " + e);
            }
            if (stats.NoAnswers > 0)
            {
                failures.Add($"{stats.NoAnswers} requests got no answer");
                Console.WriteLine("  requests without an answer (the first few):");
                foreach (var e in stats.NoAnswerSamples) Console.WriteLine("    " + e);
            }

            var tracked = jobs.All;
            var ended = tracked.Where(j => j.State is not null).ToList();
            var pruned = tracked.Count(j => j.State is null && j.Pruned);
            Console.WriteLine($"jobs: {tracked.Count} submitted, {ended.Count + pruned} ended ({string.Join(", ", ended.GroupBy(j => j.State).OrderBy(g => g.Key)
                .Select(g => $"{g.Key} {g.Count()}"))}{(pruned > 0 ? $", {pruned} gone from the job store, which drops finished jobs only" : "")}), " +
                $"{notEnded.Count} not ended within {JobsEndWithin.TotalSeconds:0} s; listed at the end: queued {queued}, running {running}");
            Console.WriteLine("  by kind: " + string.Join(", ", tracked.GroupBy(j => j.Kind).OrderBy(g => g.Key).Select(g => $"{g.Key} {g.Count()}")));
            var codes = ended.Where(j => j.ErrorCode is not null).GroupBy(j => j.ErrorCode).OrderByDescending(g => g.Count()).ToList();
            if (codes.Count > 0) Console.WriteLine("  errors of failed/cancelled jobs: " + string.Join(", ", codes.Select(g => $"{g.Key} {g.Count()}")));
            if (notEnded.Count > 0)
            {
                failures.Add($"{notEnded.Count} jobs did not end");
                foreach (var j in notEnded.Take(5)) Console.WriteLine($"    not ended: {j.Id} {j.Kind} {j.Domain}");
            }
            if (queued is not 0 || running is not 0)
                failures.Add($"jobs still listed at the end: queued {queued?.ToString(CultureInfo.InvariantCulture) ?? "?"}, running {running?.ToString(CultureInfo.InvariantCulture) ?? "?"}");

            Console.WriteLine($"events: {events.Events} received on {readers.Count} reading streams, {events.Connects} connections " +
                              $"(reconnects with Last-Event-ID), {events.Resyncs} resyncs, {events.Broken} broken, {events.OrderViolations} out of order");
            Console.WriteLine($"  the never-reading stream: {silentVerdict}");
            if (events.OrderViolations > 0)
            {
                failures.Add($"{events.OrderViolations} event ids out of order");
                Console.WriteLine("  first: " + events.FirstViolation);
            }
            Console.WriteLine($"VMs: {world.Vms.Length - unbooted.Count} of {world.Vms.Length} guests booted; " + vmVerdict);

            if (warm is null || end is null)
            {
                failures.Add("the daemon process could not be sampled (gone?)");
            }
            else
            {
                Console.WriteLine($"daemon {o.Pid}: warm-up = t={warm.Seconds:0} s (under load); end = t={end.Seconds:0} s (clients stopped, jobs ended, idle; streams, connections and VMs still open)");
                Console.WriteLine($"  {"",-8} {"warm-up",10} {"end",10} {"change",9}   limit");
                Check("RSS MiB", warm.RssMiB, end.RssMiB, RssSlackMiB, "0.0");
                Check("threads", warm.Threads, end.Threads, ThreadSlack, "0");
                Check("fds", warm.Fds, end.Fds, FdSlack, "0");
                Console.WriteLine($"  open fds at the end: {end.FdKinds}");
                var samples = sampler.Samples;
                var every = Math.Max(1, samples.Count / 20);
                Console.WriteLine("  over time (t s: RSS MiB/threads/fds): " + string.Join("  ", samples.Where((_, i) => i % every == 0)
                    .Select(s => $"{s.Seconds:0}: {s.RssMiB:0}/{s.Threads}/{s.Fds}")));
            }

            Console.WriteLine(failures.Count == 0 ? "soak: PASS" : $"soak: FAIL ({string.Join("; ", failures)})");
            return failures.Count == 0 ? 0 : 1;

            void Check(string what, double first, double last, double slack, string format)
            {
                var limit = first + Math.Max(first * Tolerance, slack);
                var ok = last <= limit;
                var change = first > 0 ? (last - first) / first : 0;
                Console.WriteLine($"  {what,-8} {first.ToString(format, CultureInfo.InvariantCulture),10} {last.ToString(format, CultureInfo.InvariantCulture),10} " +
                                  $"{change * 100,8:+0.0;-0.0;0.0}%   ≤ {limit.ToString(format, CultureInfo.InvariantCulture)}{(ok ? "" : "  EXCEEDED")}");
                if (!ok)
                    failures.Add($"{what} grew from {first.ToString(format, CultureInfo.InvariantCulture)} at the warm-up to {last.ToString(format, CultureInfo.InvariantCulture)} " +
                                 $"(+{change * 100:0.0} %; limit {limit.ToString(format, CultureInfo.InvariantCulture)})");
            }
        }

        /// <summary>
        /// Tokens, the QEMU VMs (started first, so that their guests boot while the rest is set up), the simulated domains
        /// (every other one started, some with faults).
        /// </summary>
        private static async Task<World> SetUpAsync(Api api, JobTracker jobs, Options o)
        {
            var host = await api.GetAsync(HostOp, "/api/v1/host").ConfigureAwait(false);
            if (host.Status != 200) throw new SetupException($"GET /api/v1/host: {host.Status} {host.Body}");
            if (o.Vms > 0 && host.As(SoakJson.Default.HostDto)?.Hypervisors.FirstOrDefault(h => h.Driver == "qemu") is not { Available: true })
                throw new SetupException("the QEMU driver is not available: " + host.Body);

            async Task<string> TokenAsync(string name, string role)
            {
                var r = await api.PostAsync(TokenCreateOp, "/api/v1/tokens", new CreateTokenRequest(name, role, null), SoakJson.Default.CreateTokenRequest).ConfigureAwait(false);
                return r.Status == 201 && r.As(SoakJson.Default.CreatedTokenDto)?.Secret is { } s ? s : throw new SetupException($"POST /api/v1/tokens {name}: {r.Status} {r.Body}");
            }

            var sims = Enumerable.Range(0, o.Clients * World.SimsPerClient).Select(i => $"sim-{i:000}").ToArray();
            // Faults: a guest in 20 ignores the power button, one in 25 ignores SIGTERM.
            var world = new World
            {
                Sims = sims,
                Vms = Enumerable.Range(0, o.Vms).Select(i => $"vm-{i}").ToArray(),
                IgnoresAcpi = sims.Where((_, i) => i % 20 == 7).ToHashSet(),
                IgnoresSigterm = sims.Where((_, i) => i % 25 == 11).ToHashSet(),
                ReaderToken = await TokenAsync("soak-reader", "reader").ConfigureAwait(false),
                OperatorToken = await TokenAsync("soak-operator", "operator").ConfigureAwait(false),
                SessionToken = await TokenAsync("soak-session", "reader").ConfigureAwait(false),
            };

            async Task DefineAsync(DomainDefinition definition)
            {
                var r = await api.PostAsync(DefineOp, "/api/v1/domains", definition, SoakJson.Default.DomainDefinition).ConfigureAwait(false);
                if (r.Status != 201 || r.As(SoakJson.Default.DomainDto)?.Uuid is not { } uuid) throw new SetupException($"define {definition.Name}: {r.Status} {r.Body}");
                lock (world.Guests) world.Uuids[definition.Name!] = uuid;
            }

            async Task StartAsync(string name, bool mustRun)
            {
                var r = await api.PostAsync(ActionOp("start"), $"/api/v1/domains/{name}/start?wait=60", null, waitSeconds: 60).ConfigureAwait(false);
                jobs.Submitted(r.Job);
                if (mustRun && (r.Status != 200 || r.Job?.State != "succeeded")) throw new SetupException($"start {name}: {r.Status} {r.Body}");
            }

            var parallel = new ParallelOptions { MaxDegreeOfParallelism = 16 };
            await Parallel.ForEachAsync(world.Vms, parallel, async (vm, _) =>
            {
                await DefineAsync(new DomainDefinition
                {
                    Name = vm,
                    Driver = "qemu",
                    Vcpus = 1,
                    MemoryMiB = 128, // the test guest's kernel needs 96 at least
                    Boot = new BootConfig(o.Kernel, o.Initrd, "console=ttyS0 quiet panic=-1"),
                    Description = "soak: the test guest",
                }).ConfigureAwait(false);
                lock (world.Guests) world.Guests[vm] = new Guest(Path.Combine(o.StateDirectory, "log", world.Uuids[vm] + ".console.log"));
                await StartAsync(vm, mustRun: true).ConfigureAwait(false);
            }).ConfigureAwait(false);

            await Parallel.ForEachAsync(Enumerable.Range(0, sims.Length), parallel, async (i, _) =>
            {
                await DefineAsync(new DomainDefinition
                {
                    Name = sims[i],
                    Driver = "simulated",
                    Vcpus = 1 + i % 2,
                    MemoryMiB = 64,
                    Description = "soak",
                    Simulation = new SimulationConfig(i % 7 * 40, i % 5 * 50, world.IgnoresAcpi.Contains(sims[i]), world.IgnoresSigterm.Contains(sims[i])),
                }).ConfigureAwait(false);
                if (i % 2 == 0) await StartAsync(sims[i], mustRun: false).ConfigureAwait(false);
            }).ConfigureAwait(false);
            return world;
        }

        /// <summary>Long-polls every job not yet seen ending, until all have ended or the deadline; returns those that did not.</summary>
        private static async Task<List<JobTracker.Tracked>> DrainAsync(Api api, JobTracker jobs, TimeSpan within)
        {
            var deadline = Stopwatch.StartNew();
            await Parallel.ForEachAsync(jobs.Unfinished(), new ParallelOptions { MaxDegreeOfParallelism = 32 }, async (job, _) =>
            {
                while (job.State is null && deadline.Elapsed < within)
                {
                    var wait = (int)Math.Clamp((within - deadline.Elapsed).TotalSeconds, 1, 30);
                    var r = await api.GetAsync(JobOp, $"/api/v1/jobs/{job.Id}?wait={wait}", waitSeconds: wait).ConfigureAwait(false);
                    if (r.Status == 200)
                    {
                        jobs.Seen(r.Job);
                    }
                    else if (r.Status == 404)
                    {
                        job.Pruned = true;
                        return;
                    }
                    else if (r.Status != 0)
                    {
                        return; // a 4xx here is a bug of its own, reported as not ended
                    }
                }
            }).ConfigureAwait(false);
            return jobs.Unfinished().Where(j => !j.Pruned).ToList();
        }

        /// <summary>How many jobs a list holds (null when it cannot be read).</summary>
        private static async Task<int?> CountAsync(Api api, string path)
        {
            var r = await api.GetAsync(JobsOp, path).ConfigureAwait(false);
            return r.Status == 200 ? r.As(SoakJson.Default.PageDto)?.Count : null;
        }

        /// <summary>
        /// Polls until the daemon is idle, at most 20 s: under 5 % of a CPU over the last second, and at least 3 s after
        /// <paramref name="loadEnded"/> (the thread pool's surplus workers retire once idle for 2 s, as scripts/soak sets it).
        /// </summary>
        private static async Task<bool> SettleAsync(Sampler sampler, Stopwatch loadEnded)
        {
            var deadline = Stopwatch.StartNew();
            var cpuAt = Stopwatch.StartNew();
            var cpuBefore = sampler.CpuSeconds();
            while (deadline.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250)).ConfigureAwait(false);
                if (cpuAt.Elapsed < TimeSpan.FromSeconds(1)) continue;
                var cpu = sampler.CpuSeconds();
                var idle = (cpu - cpuBefore) / cpuAt.Elapsed.TotalSeconds < 0.05;
                (cpuBefore, cpuAt) = (cpu, Stopwatch.StartNew());
                if (idle && loadEnded.Elapsed >= TimeSpan.FromSeconds(3)) return true;
            }
            return false;
        }

        /// <summary>
        /// Destroys every VM, checks each is shut off, and polls /proc until no QEMU of the daemon's run directory is left
        /// (at most 15 s). Returns what it found; adds to <paramref name="failures"/>.
        /// </summary>
        private static async Task<string> DestroyVmsAsync(Api api, World world, string runDirectory, List<string> failures)
        {
            var clock = Stopwatch.StartNew();
            var destroyed = await Task.WhenAll(world.Vms.Select(async vm =>
            {
                var r = await api.PostAsync(ActionOp("destroy"), $"/api/v1/domains/{vm}/destroy?wait=30", null, waitSeconds: 30).ConfigureAwait(false);
                var d = await api.GetAsync(DomainOp, "/api/v1/domains/" + vm).ConfigureAwait(false);
                var state = d.As(SoakJson.Default.DomainDto)?.State ?? $"unknown ({d.Status})";
                return (vm, Job: r.Job?.State ?? $"no job ({r.Status})", State: state);
            })).ConfigureAwait(false);
            var notOff = destroyed.Where(v => v.State != "shut-off").ToList();
            if (notOff.Count > 0) failures.Add("VMs not shut off after destroy: " + string.Join(", ", notOff.Select(v => $"{v.vm} {v.State} (destroy {v.Job})")));
            var left = QemuProcesses.Of(runDirectory);
            while (left.Count > 0 && clock.Elapsed < TimeSpan.FromSeconds(15))
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100)).ConfigureAwait(false);
                left = QemuProcesses.Of(runDirectory);
            }
            if (left.Count > 0) failures.Add($"QEMU processes of the daemon still running after the VMs were destroyed: {string.Join(", ", left)}");
            return $"{destroyed.Count(v => v.State == "shut-off")} of {world.Vms.Length} shut off after destroy; " +
                   $"{(left.Count == 0 ? "no QEMU process" : $"QEMU processes {string.Join(", ", left)}")} of {runDirectory} left, {clock.Elapsed.TotalSeconds:0.0} s";
        }

        private static async Task PollAsync(Func<bool> condition, TimeSpan within, string what)
        {
            if (!await PollAsync(condition, within).ConfigureAwait(false)) throw new SetupException($"timed out after {within.TotalSeconds:0} s waiting for {what}");
        }

        /// <summary>Polls <paramref name="condition"/> every 50 ms: whether it held within <paramref name="within"/>.</summary>
        private static async Task<bool> PollAsync(Func<bool> condition, TimeSpan within)
        {
            var deadline = Stopwatch.StartNew();
            while (!condition())
            {
                if (deadline.Elapsed > within) return false;
                await Task.Delay(50).ConfigureAwait(false);
            }
            return true;
        }

        /// <summary>A line every 5 s while the clients run.</summary>
        private static async Task ProgressAsync(Stats stats, JobTracker jobs, StreamStats events, Sampler sampler, Stopwatch clock, CancellationToken stop)
        {
            const int Every = 5;
            using var timer = new PeriodicTimer(TimeSpan.FromSeconds(Every));
            var last = stats.Total;
            var cpu = sampler.CpuSeconds();
            try
            {
                while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
                {
                    var total = stats.Total;
                    var s = sampler.Take();
                    var cpuNow = s?.CpuSeconds ?? cpu;
                    Console.WriteLine($"   t={clock.Elapsed.TotalSeconds,3:0} s: {(total - last) / (double)Every,6:0} req/s, {jobs.Count} jobs, {events.Events} events, " +
                                      $"5xx {stats.ServerErrors}; daemon {(cpuNow - cpu) * 100 / Every,3:0} % CPU, RSS {s?.RssMiB ?? 0:0} MiB, {s?.Threads ?? 0} threads, " +
                                      $"{s?.Fds ?? 0} fds; load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
                    last = total;
                    cpu = cpuNow;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
            }
        }

        /// <summary>"METHOD /path" of every operation in the OpenAPI document.</summary>
        private static List<string> Endpoints(string openApiFile)
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(openApiFile));
            var list = new List<string>();
            foreach (var path in doc.RootElement.GetProperty("paths").EnumerateObject())
                foreach (var op in path.Value.EnumerateObject())
                    if (op.Name is "get" or "post" or "put" or "delete" or "patch") list.Add($"{op.Name.ToUpperInvariant()} {path.Name}");
            return list;
        }
    }

    internal sealed class SetupException(string message) : Exception(message);

    /// <summary>When the clients stop (on the load's clock): unknown until the warm-up has ended.</summary>
    internal sealed class StopTime
    {
        private long _ms = long.MaxValue;

        public void Set(TimeSpan at) => Interlocked.Exchange(ref _ms, (long)at.TotalMilliseconds);

        public bool Before(TimeSpan now) => now.TotalMilliseconds < Interlocked.Read(ref _ms);
    }

    /// <summary>
    /// The QEMU processes a daemon started: QEMU runs as another user and its argv names no path, but its environment
    /// carries <c>VIRTD_RUN_DIRECTORY=&lt;the daemon's run directory&gt;</c> (as QemuHost.FindAll in the QEMU tests reads it).
    /// </summary>
    internal static class QemuProcesses
    {
        public static List<int> Of(string runDirectory)
        {
            var marker = "VIRTD_RUN_DIRECTORY=" + runDirectory;
            var pids = new List<int>();
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
                try
                {
                    if (File.ReadAllText(Path.Combine(dir, "environ")).Split('\0').Contains(marker) && !IsZombie(dir)) pids.Add(pid);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // gone meanwhile, or a kernel thread
                }
            }
            return pids;
        }

        /// <summary>A process that has exited and waits for its parent to reap it runs no VM.</summary>
        private static bool IsZombie(string dir)
        {
            var stat = File.ReadAllText(Path.Combine(dir, "stat"));
            return stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
        }
    }
}
