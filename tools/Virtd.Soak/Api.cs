using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Virtd.Soak;

/// <summary>One answer: the status (0 when none came), the body and the headers the soak uses.</summary>
internal sealed class Reply(int status, string body, string? etag, string? setCookie)
{
    public int Status => status;
    public string Body => body;
    public string? ETag => etag;
    public string? SetCookie => setCookie;

    /// <summary>The body as <typeparamref name="T"/> (source-generated, <see cref="SoakJson"/>), or null when it is not one.</summary>
    public T? As<T>(JsonTypeInfo<T> type) where T : class
    {
        if (body.Length == 0) return null;
        try
        {
            return JsonSerializer.Deserialize(body, type);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>The job an action or a job read answered with.</summary>
    public JobDto? Job => status is 200 or 202 ? As(SoakJson.Default.JobDto) : null;
}

/// <summary>
/// Every request of the soak goes through here: it is counted under its endpoint (the OpenAPI "METHOD path" template)
/// and its status; a 5xx and a request that got no answer are kept (the first few in full) for the report.
/// </summary>
internal sealed class Api(HttpClient http, Stats stats, string adminToken)
{
    /// <summary>Pass as the token for a request without credentials.</summary>
    public const string Anonymous = "";

    /// <summary>Seconds a request may take to be answered, beyond its own ?wait=.</summary>
    public const int Deadline = 60;

    public string AdminToken => adminToken;
    public Stats Stats => stats;
    public HttpClient Http => http;

    /// <summary>
    /// An HTTP client to <paramref name="url"/> with connections kept for the whole soak (so that the daemon's sockets at
    /// the end are those at the warm-up), at most <paramref name="connections"/> of them.
    /// </summary>
    public static HttpClient Connect(Uri url, int connections) => new(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = connections,
        UseCookies = false, // the session clients handle their cookie themselves
        PooledConnectionIdleTimeout = TimeSpan.FromMinutes(10),
        PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
        ConnectTimeout = TimeSpan.FromSeconds(10),
    })
    {
        BaseAddress = url,
        Timeout = Timeout.InfiniteTimeSpan,
    };

    /// <summary>The same API through one connection of its own, as a separate client process has (counted in the same <see cref="Stats"/>).</summary>
    public Api OwnConnection() => new(Connect(http.BaseAddress!, 1), stats, adminToken);

    public Task<Reply> GetAsync(string op, string path, string? token = null, int waitSeconds = 0) =>
        SendAsync(op, HttpMethod.Get, path, token: token, waitSeconds: waitSeconds);

    public Task<Reply> PostAsync(string op, string path, string? json, string? token = null, int waitSeconds = 0,
        Action<HttpRequestMessage>? configure = null) =>
        SendAsync(op, HttpMethod.Post, path, json, token: token, waitSeconds: waitSeconds, configure: configure);

    public Task<Reply> PostAsync<T>(string op, string path, T body, JsonTypeInfo<T> type, string? token = null, int waitSeconds = 0,
        Action<HttpRequestMessage>? configure = null) =>
        SendAsync(op, HttpMethod.Post, path, JsonSerializer.Serialize(body, type), token: token, waitSeconds: waitSeconds, configure: configure);

    public Task<Reply> DeleteAsync(string op, string path, string? token = null, Action<HttpRequestMessage>? configure = null) =>
        SendAsync(op, HttpMethod.Delete, path, token: token, configure: configure);

    /// <summary>
    /// Sends one request with its own deadline: 60 s (a change may wait for its domain's gate for Jobs:WaitTimeout, 30 s, before
    /// it is refused 409 domain-busy) plus <paramref name="waitSeconds"/> for a long poll. Never throws for a failed exchange:
    /// the reply then has status 0 and is counted as "no answer".
    /// </summary>
    public async Task<Reply> SendAsync(string op, HttpMethod method, string path, string? json = null, string contentType = "application/json",
        string? token = null, int waitSeconds = 0, Action<HttpRequestMessage>? configure = null)
    {
        using var request = new HttpRequestMessage(method, path);
        token ??= adminToken;
        if (token.Length > 0) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        if (json is not null) request.Content = new StringContent(json, Encoding.UTF8, contentType);
        configure?.Invoke(request);
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(Deadline + waitSeconds));
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseContentRead, deadline.Token).ConfigureAwait(false);
            var body = await response.Content.ReadAsStringAsync(deadline.Token).ConfigureAwait(false);
            var etag = response.Headers.ETag?.ToString();
            var cookie = response.Headers.TryGetValues("Set-Cookie", out var cookies) ? cookies.FirstOrDefault() : null;
            var status = (int)response.StatusCode;
            stats.Count(op, status, System.Diagnostics.Stopwatch.GetElapsedTime(started), longPoll: waitSeconds > 0);
            if (status >= 500) stats.ServerError(method.Method, path, status, body);
            return new Reply(status, body, etag, cookie);
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException or IOException)
        {
            stats.Count(op, 0, System.Diagnostics.Stopwatch.GetElapsedTime(started));
            stats.NoAnswer(method.Method, path, e is OperationCanceledException ? $"no answer within {Deadline + waitSeconds} s" : Stats.Describe(e));
            return new Reply(0, "", null, null);
        }
    }
}

/// <summary>Counts of every request by endpoint and status, and the failures kept for the report.</summary>
internal sealed class Stats
{
    private const int Kept = 5;
    private readonly ConcurrentDictionary<(string Op, int Status), long> _counts = new();
    private readonly ConcurrentDictionary<string, (long Count, double Seconds, double Max)> _times = new();
    private readonly ConcurrentQueue<string> _serverErrors = new();
    private readonly ConcurrentQueue<string> _noAnswers = new();
    private long _total;
    private long _serverErrorCount;
    private long _noAnswerCount;

    public long Total => Interlocked.Read(ref _total);
    public long ServerErrors => Interlocked.Read(ref _serverErrorCount);
    public long NoAnswers => Interlocked.Read(ref _noAnswerCount);
    public IEnumerable<string> ServerErrorSamples => _serverErrors;
    public IEnumerable<string> NoAnswerSamples => _noAnswers;

    /// <summary>Time to the whole answer of every answered request that asked for no <c>?wait=</c> (a long poll takes what it asked for).</summary>
    public LatencyHistogram Latency { get; } = new();

    public void Count(string op, int status, TimeSpan? took = null, bool longPoll = false)
    {
        Interlocked.Increment(ref _total);
        _counts.AddOrUpdate((op, status), 1, (_, n) => n + 1);
        if (took is { } t)
        {
            _times.AddOrUpdate(op, (1, t.TotalSeconds, t.TotalSeconds), (_, v) => (v.Count + 1, v.Seconds + t.TotalSeconds, Math.Max(v.Max, t.TotalSeconds)));
            if (status != 0 && !longPoll) Latency.Add(t);
        }
    }

    /// <summary>Mean time to the whole answer, in ms, of an endpoint's requests (streams excepted).</summary>
    public double MeanMs(string op) => _times.TryGetValue(op, out var v) && v.Count > 0 ? v.Seconds / v.Count * 1000 : double.NaN;

    /// <summary>The longest time to the whole answer of an endpoint's requests, in s (long polls with ?wait= included).</summary>
    public double MaxSeconds(string op) => _times.TryGetValue(op, out var v) ? v.Max : double.NaN;

    public void ServerError(string method, string path, int status, string body)
    {
        if (Interlocked.Increment(ref _serverErrorCount) <= Kept)
            _serverErrors.Enqueue($"{method} {path} -> {status}: {Truncate(body, 600)}");
    }

    public void NoAnswer(string method, string path, string why)
    {
        if (Interlocked.Increment(ref _noAnswerCount) <= Kept) _noAnswers.Enqueue($"{method} {path}: {why}");
    }

    public Dictionary<(string Op, int Status), long> Snapshot() => new(_counts);

    /// <summary>An exception with its inner ones: "An error occurred while sending the request" alone says nothing.</summary>
    public static string Describe(Exception e)
    {
        var parts = new List<string>();
        for (var x = e; x is not null; x = x.InnerException) parts.Add($"{x.GetType().Name}: {x.Message}");
        return string.Join(" <- ", parts);
    }

    private static string Truncate(string s, int n) => s.Length <= n ? s : s[..n] + "...";
}

/// <summary>
/// Latencies in buckets 4 % wide from 1 µs up (a percentile is the upper bound of its bucket, so at most 4 % high); lock-free,
/// and two snapshots subtract, so the run after the warm-up has its own percentiles.
/// </summary>
internal sealed class LatencyHistogram
{
    private const double Width = 1.04;
    private static readonly double LogWidth = Math.Log(Width);
    private readonly long[] _buckets = new long[640]; // 1.04^640 µs: beyond any deadline

    public void Add(TimeSpan t)
    {
        var i = (int)(Math.Log(Math.Max(1, t.TotalMicroseconds)) / LogWidth);
        Interlocked.Increment(ref _buckets[Math.Clamp(i, 0, _buckets.Length - 1)]);
    }

    public long[] Snapshot()
    {
        var copy = new long[_buckets.Length];
        for (var i = 0; i < copy.Length; i++) copy[i] = Interlocked.Read(ref _buckets[i]);
        return copy;
    }

    /// <summary>Counts of <paramref name="later"/> minus those of <paramref name="earlier"/>.</summary>
    public static long[] Between(long[] earlier, long[] later) => [.. later.Select((n, i) => n - earlier[i])];

    /// <summary>The <paramref name="p"/> quantile (0..1) in ms, NaN when nothing was counted.</summary>
    public static double PercentileMs(long[] counts, double p)
    {
        var total = counts.Sum();
        if (total == 0) return double.NaN;
        var rank = (long)Math.Ceiling(p * total);
        long seen = 0;
        for (var i = 0; i < counts.Length; i++)
        {
            seen += counts[i];
            if (seen >= Math.Max(1, rank)) return Math.Pow(Width, i + 1) / 1000;
        }
        return Math.Pow(Width, counts.Length) / 1000;
    }
}
