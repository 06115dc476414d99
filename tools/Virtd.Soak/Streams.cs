using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;

namespace Virtd.Soak;

/// <summary>What all event streams saw together.</summary>
internal sealed class StreamStats
{
    private long _events;
    private long _resyncs;
    private long _connects;
    private long _orderViolations;
    private long _lastId;
    private long _broken;

    public long Events => Interlocked.Read(ref _events);
    public long Resyncs => Interlocked.Read(ref _resyncs);
    public long Connects => Interlocked.Read(ref _connects);
    public long Broken => Interlocked.Read(ref _broken);
    public long OrderViolations => Interlocked.Read(ref _orderViolations);
    public string? FirstViolation { get; private set; }

    /// <summary>The newest event id any stream has seen: where the clients' short streams resume from.</summary>
    public long LastId => Interlocked.Read(ref _lastId);

    public void Event() => Interlocked.Increment(ref _events);
    public void Resync() => Interlocked.Increment(ref _resyncs);
    public void Connect() => Interlocked.Increment(ref _connects);
    public void Break() => Interlocked.Increment(ref _broken);

    public void SawId(long id)
    {
        var seen = Interlocked.Read(ref _lastId);
        while (id > seen)
        {
            var was = Interlocked.CompareExchange(ref _lastId, id, seen);
            if (was == seen) return;
            seen = was;
        }
    }

    public void Violation(string what)
    {
        if (Interlocked.Increment(ref _orderViolations) == 1) FirstViolation = what;
    }
}

/// <summary>
/// One long-lived <c>GET /api/v1/events</c> client that reads every frame and checks that ids increase. It reconnects
/// with <c>Last-Event-ID</c> every so often (a replay with no gap and no duplicate), and after the daemon ends the stream
/// (a <c>resync</c> when it fell behind). The tracker stream (<c>?types=job.finished</c>) reports each job's end.
/// </summary>
internal sealed class EventReader(Api api, StreamStats stats, JobTracker? tracker, string query, int seed)
{
    private long _lastId;

    public async Task RunAsync(CancellationToken stop)
    {
        var rng = new Random(seed);
        while (!stop.IsCancellationRequested)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/events" + query);
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", api.AdminToken);
            var resumedFrom = _lastId;
            if (resumedFrom > 0) request.Headers.Add("Last-Event-ID", resumedFrom.ToString(CultureInfo.InvariantCulture));
            // Readers (not the tracker) reconnect every 5-15 s on their own.
            using var session = CancellationTokenSource.CreateLinkedTokenSource(stop);
            if (tracker is null) session.CancelAfter(TimeSpan.FromSeconds(5 + rng.Next(10)));
            try
            {
                using var response = await api.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, session.Token).ConfigureAwait(false);
                api.Stats.Count(Soak.EventsOp, (int)response.StatusCode);
                if ((int)response.StatusCode >= 500)
                    api.Stats.ServerError("GET", "/api/v1/events" + query, (int)response.StatusCode, await response.Content.ReadAsStringAsync(stop).ConfigureAwait(false));
                if ((int)response.StatusCode != 200)
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), stop).ConfigureAwait(false); // 429 too-many-streams: Retry-After is 1 s
                    continue;
                }
                stats.Connect();
                await using var body = await response.Content.ReadAsStreamAsync(session.Token).ConfigureAwait(false);
                await ReadAsync(body, resumedFrom > 0 ? resumedFrom.ToString(CultureInfo.InvariantCulture) : "the start", session.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!stop.IsCancellationRequested)
            {
                // Time to reconnect with Last-Event-ID.
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or IOException)
            {
                stats.Break();
                if (_lastId == 0) api.Stats.NoAnswer("GET", "/api/v1/events" + query, Stats.Describe(e));
            }
        }
    }

    private async Task ReadAsync(Stream body, string resumedFrom, CancellationToken ct)
    {
        using var reader = new StreamReader(body);
        long frameId = 0;
        string? type = null;
        string? data = null;
        while (await reader.ReadLineAsync(ct).ConfigureAwait(false) is { } line)
        {
            if (line.Length == 0)
            {
                if (frameId > 0) Frame(frameId, type, data, resumedFrom);
                frameId = 0;
                type = data = null;
            }
            else if (line.StartsWith("id: ", StringComparison.Ordinal))
            {
                frameId = long.Parse(line.AsSpan(4), CultureInfo.InvariantCulture);
            }
            else if (line.StartsWith("event: ", StringComparison.Ordinal))
            {
                type = line[7..];
            }
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                data = line[6..];
            }
            // ": heartbeat" comments carry nothing to check.
        }
    }

    /// <summary>
    /// One frame. Ids increase: an event's id is above every id before it on this stream, and above the Last-Event-ID it
    /// resumed from (the replay has no duplicate); an id-only frame never goes back. A resync says where the stream goes on.
    /// </summary>
    private void Frame(long id, string? type, string? data, string resumedFrom)
    {
        if (type == "resync")
        {
            stats.Resync();
            _lastId = id;
            return;
        }
        if (type is null ? id < _lastId : id <= _lastId)
            stats.Violation($"stream {query} (resumed from {resumedFrom}): {type ?? "id-only frame"} {id} after {_lastId}");
        _lastId = Math.Max(_lastId, id);
        stats.SawId(id);
        if (type is null) return;
        stats.Event();
        if (tracker is not null && type == "job.finished" && data is not null) Finished(data);
    }

    private void Finished(string data)
    {
        if (JsonSerializer.Deserialize(data, SoakJson.Default.JobFinishedEvent) is { } e) tracker!.FinishedEvent(e.JobId, e.State, e.ErrorCode);
    }
}

/// <summary>
/// A stream that is opened and never read: the daemon must neither slow down nor keep its buffers. It is looked at once
/// at the end: did the daemon cut it off (its connection ends after the bytes already sent)?
/// </summary>
internal sealed class SilentStream(Api api)
{
    private HttpResponseMessage? _response;
    private Stream? _body;

    public async Task OpenAsync()
    {
        var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/events");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", api.AdminToken);
        _response = await api.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        api.Stats.Count(Soak.EventsOp, (int)_response.StatusCode);
        if (!_response.IsSuccessStatusCode) throw new InvalidOperationException($"the silent stream got {(int)_response.StatusCode}");
        _body = await _response.Content.ReadAsStreamAsync().ConfigureAwait(false);
    }

    /// <summary>Reads what is left (bounded by <paramref name="within"/>): "cut off" when the stream has ended, with the bytes it held.</summary>
    public async Task<string> VerdictAsync(TimeSpan within)
    {
        if (_body is null) return "never opened";
        var buffer = new byte[64 * 1024];
        long total = 0;
        var resync = false;
        using var deadline = new CancellationTokenSource(within);
        try
        {
            int n;
            while ((n = await _body.ReadAsync(buffer, deadline.Token).ConfigureAwait(false)) > 0)
            {
                total += n;
                if (!resync && System.Text.Encoding.UTF8.GetString(buffer, 0, n).Contains("event: resync", StringComparison.Ordinal)) resync = true;
            }
            return $"cut off by the daemon ({total / 1024} KiB were in the socket buffers{(resync ? ", ending with a resync" : "")})";
        }
        catch (OperationCanceledException)
        {
            return $"still open after {total / 1024} KiB (the daemon had not cut it off)";
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            return $"cut off by the daemon: connection dropped after {total / 1024} KiB ({e.GetType().Name})";
        }
        finally
        {
            await _body.DisposeAsync().ConfigureAwait(false);
            _response?.Dispose();
        }
    }
}
