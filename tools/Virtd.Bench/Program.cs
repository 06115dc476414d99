using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using Virtd.Bench;

// Benchmark client for a running virtd:
// `virtd-bench lifecycle --url http://127.0.0.1:8478 --token-file STATE/initial-admin-token [--starts 30] [--vms 10] [--seconds 10]`.
var opts = Args.Parse(args);
using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 64 })
{
    BaseAddress = new Uri(opts.Get("url", "http://127.0.0.1:8478")),
    Timeout = TimeSpan.FromMinutes(2),
};
http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer",
    File.ReadAllText(opts.Get("token-file", "/var/lib/virtd/initial-admin-token")).Trim());
switch (opts.Command)
{
    case "lifecycle":
        return await Lifecycle.RunAsync(http, opts.Int("starts", 30), opts.Int("vms", 10), opts.Int("seconds", 10));
    case "starts":
    {
        // Two daemons (--url/--token-file and --url2/--token-file2), their starts interleaved so that both see the same load.
        using var other = new HttpClient { BaseAddress = new Uri(opts.Get("url2", "http://127.0.0.1:8479")), Timeout = TimeSpan.FromMinutes(2) };
        other.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer",
            File.ReadAllText(opts.Get("token-file2", "")).Trim());
        return await Lifecycle.StartsAsync(http, other, opts.Int("starts", 30), opts.Get("label", "first"), opts.Get("label2", "second"));
    }
    case "jobs":
        return await JobsBench.RunAsync(http, opts.Int("clients", 50), opts.Int("seconds", 10));
    default:
        Console.Error.WriteLine("usage: virtd-bench lifecycle|starts|jobs --url URL --token-file FILE [--starts N] [--vms N] [--clients N] [--seconds N] [--label TEXT]");
        return 2;
}

namespace Virtd.Bench
{
    internal sealed record Args(string Command, Dictionary<string, string> Values)
    {
        public static Args Parse(string[] args)
        {
            var values = new Dictionary<string, string>();
            for (var i = 1; i + 1 < args.Length; i += 2) values[args[i].TrimStart('-')] = args[i + 1];
            return new Args(args.Length > 0 ? args[0] : "", values);
        }

        public string Get(string key, string fallback) => Values.GetValueOrDefault(key, fallback);
        public int Int(string key, int fallback) => Values.TryGetValue(key, out var v) ? int.Parse(v) : fallback;
    }

    /// <summary>
    /// Job throughput: each client alternates suspend and resume (with ?wait=, so every job does its work and is
    /// counted once it has finished) on its own simulated domain. Prints one line the script parses:
    /// <c>jobs N seconds S jobs/s R fsyncs F records C</c>.
    /// </summary>
    internal static class JobsBench
    {
        public static async Task<int> RunAsync(HttpClient http, int clients, int seconds)
        {
            var names = Enumerable.Range(0, clients).Select(i => $"jobs-{i}").ToList();
            await Task.WhenAll(names.Select(async n =>
            {
                var r = await http.PostAsJsonAsync("/api/v1/domains", new { name = n, memoryMiB = 64, driver = "simulated" });
                if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"define {n}: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
                await ActAsync(http, n, "start");
            }));
            // Warm-up, then the measured run.
            await LoopAsync(http, names, TimeSpan.FromSeconds(2));
            var before = await JournalAsync(http);
            var sw = Stopwatch.StartNew();
            var jobs = await LoopAsync(http, names, TimeSpan.FromSeconds(seconds));
            var elapsed = sw.Elapsed.TotalSeconds;
            var after = await JournalAsync(http);
            Console.WriteLine($"jobs {jobs} seconds {elapsed:0.00} jobs/s {jobs / elapsed:0} fsyncs/s {(after.Fsyncs - before.Fsyncs) / elapsed:0} " +
                              $"records/s {(after.Records - before.Records) / elapsed:0}");
            return 0;
        }

        private static async Task<long> LoopAsync(HttpClient http, List<string> names, TimeSpan duration)
        {
            var count = 0L;
            var sw = Stopwatch.StartNew();
            await Task.WhenAll(names.Select(async n =>
            {
                while (sw.Elapsed < duration)
                {
                    await ActAsync(http, n, "suspend");
                    await ActAsync(http, n, "resume");
                    Interlocked.Add(ref count, 2);
                }
            }));
            return count;
        }

        private static async Task ActAsync(HttpClient http, string name, string action)
        {
            using var r = await http.PostAsync($"/api/v1/domains/{name}/{action}?wait=60", null);
            if (r.StatusCode != System.Net.HttpStatusCode.OK) throw new InvalidOperationException($"{action} {name}: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
        }

        private static async Task<(long Records, long Fsyncs)> JournalAsync(HttpClient http)
        {
            var host = await http.GetFromJsonAsync<JsonElement>("/api/v1/host");
            var j = host.GetProperty("jobs").GetProperty("journal");
            return (j.GetProperty("records").GetInt64(), j.GetProperty("fsyncs").GetInt64());
        }
    }

    internal static class Lifecycle
    {
        public static async Task<int> RunAsync(HttpClient http, int starts, int vms, int seconds)
        {
            // Start and destroy of diskless VMs, one at a time (request → running, request → shut off).
            var start = new List<double>();
            var destroy = new List<double>();
            await DefineAsync(http, "bench-seq");
            for (var i = 0; i < starts + 3; i++)
            {
                var s = await TimedAsync(http, "bench-seq", "start", "running");
                var d = await TimedAsync(http, "bench-seq", "destroy", "shut-off");
                if (i < 3) continue; // warm-up
                start.Add(s);
                destroy.Add(d);
            }
            Console.WriteLine($"start   (request → running, {starts} runs):  p50 {P(start, 50):0.0} ms  p95 {P(start, 95):0.0} ms   goal p50 ≤ 80 ms   libvirt 9.0: 344 ms");
            Console.WriteLine($"destroy (request → shut off, {starts} runs): p50 {P(destroy, 50):0.0} ms  p95 {P(destroy, 95):0.0} ms   goal p50 ≤ 20 ms   libvirt 9.0: 226 ms");

            // Suspend + resume over several VMs from as many clients.
            var names = Enumerable.Range(0, vms).Select(i => $"bench-{i}").ToList();
            foreach (var n in names)
            {
                await DefineAsync(http, n);
                await TimedAsync(http, n, "start", "running");
            }
            var ops = 0L;
            var latencies = new List<double>[vms];
            var stopAt = Stopwatch.StartNew();
            await Task.WhenAll(names.Select(async (n, i) =>
            {
                latencies[i] = [];
                while (stopAt.Elapsed.TotalSeconds < seconds)
                {
                    latencies[i].Add(await TimedAsync(http, n, "suspend", "paused"));
                    latencies[i].Add(await TimedAsync(http, n, "resume", "running"));
                    Interlocked.Add(ref ops, 2);
                }
            }));
            var elapsed = stopAt.Elapsed.TotalSeconds;
            var all = latencies.SelectMany(l => l).ToList();
            Console.WriteLine($"suspend+resume ({vms} VMs, {vms} clients, {elapsed:0.0} s): {ops / elapsed:0} ops/s  p50 {P(all, 50):0.0} ms  p99 {P(all, 99):0.0} ms   goal ≥ 2,000 ops/s   libvirt 9.0: 794–901 ops/s");

            foreach (var n in names.Append("bench-seq"))
            {
                await TimedAsync(http, n, "destroy", "shut-off");
                await http.DeleteAsync($"/api/v1/domains/{n}");
            }
            return 0;
        }

        /// <summary>
        /// Start latency of a VM with one disk, a qcow2 clone over a qcow2 base (so a start checks a two-file chain and opens
        /// both as descriptors), on two daemons in turn (request → running, p50 and p95, after 3 warm-up rounds), so that
        /// load that comes and goes falls on both alike. Prints a line per daemon and the difference of the p50s.
        /// </summary>
        public static async Task<int> StartsAsync(HttpClient first, HttpClient second, int starts, string label1, string label2)
        {
            var daemons = new[] { (Http: first, Label: label1, Times: new List<double>()), (Http: second, Label: label2, Times: new List<double>()) };
            foreach (var (http, _, _) in daemons)
            {
                const string Volumes = "/api/v1/pools/default/volumes";
                foreach (var body in new object[] { new { name = "bench-base.qcow2", format = "qcow2", capacity = "1GiB" }, new { name = "bench-top.qcow2", backingVolume = "default/bench-base.qcow2" } })
                {
                    var r = await http.PostAsJsonAsync(Volumes, body);
                    if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"volume: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
                }
                await http.DeleteAsync("/api/v1/domains/bench-disk");
                var d = await http.PostAsJsonAsync("/api/v1/domains", new { name = "bench-disk", memoryMiB = 64, disks = new[] { new { volume = "default/bench-top.qcow2" } } });
                if (!d.IsSuccessStatusCode) throw new InvalidOperationException($"define: {(int)d.StatusCode} {await d.Content.ReadAsStringAsync()}");
            }
            for (var i = 0; i < starts + 3; i++)
            {
                foreach (var (http, _, times) in i % 2 == 0 ? daemons : daemons.Reverse())
                {
                    var s = await TimedAsync(http, "bench-disk", "start", "running");
                    await TimedAsync(http, "bench-disk", "destroy", "shut-off");
                    if (i >= 3) times.Add(s);
                }
            }
            foreach (var (http, label, times) in daemons)
            {
                Console.WriteLine($"{label}: start (request → running, qcow2 over qcow2, {starts} runs): p50 {P(times, 50):0.0} ms  p95 {P(times, 95):0.0} ms");
                await http.DeleteAsync("/api/v1/domains/bench-disk");
            }
            Console.WriteLine($"confinement overhead at p50: {P(daemons[0].Times, 50) - P(daemons[1].Times, 50):0.0} ms   goal < 15 ms");
            return 0;
        }

        private static async Task DefineAsync(HttpClient http, string name)
        {
            await http.DeleteAsync($"/api/v1/domains/{name}");
            var r = await http.PostAsJsonAsync("/api/v1/domains", new { name, memoryMiB = 64, vcpus = 1 });
            if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"define {name}: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
        }

        /// <summary>One action with ?wait=: the time from request to the finished job, which has reached <paramref name="state"/>.</summary>
        private static async Task<double> TimedAsync(HttpClient http, string name, string action, string state)
        {
            var sw = Stopwatch.StartNew();
            using var r = await http.PostAsync($"/api/v1/domains/{name}/{action}?wait=60", null);
            var ms = sw.Elapsed.TotalMilliseconds;
            var job = await r.Content.ReadFromJsonAsync<JsonElement>();
            var result = job.TryGetProperty("result", out var res) && res.TryGetProperty("state", out var st) ? st.GetString() : null;
            if (!r.IsSuccessStatusCode || job.GetProperty("state").GetString() != "succeeded" || result != state)
                throw new InvalidOperationException($"{action} {name}: {(int)r.StatusCode} {job}");
            return ms;
        }

        private static double P(List<double> values, int percentile)
        {
            if (values.Count == 0) return double.NaN;
            var sorted = values.Order().ToList();
            return sorted[Math.Clamp((int)Math.Ceiling(percentile / 100.0 * sorted.Count) - 1, 0, sorted.Count - 1)];
        }
    }
}
