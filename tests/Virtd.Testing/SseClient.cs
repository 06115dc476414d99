using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;

namespace Virtd.Testing;

/// <summary>One Server-Sent Events block as it came off the wire: fields, and the comment lines before it.</summary>
public sealed record SseFrame(long? Id, string? Type, string? Data, int Comments)
{
    /// <summary>A frame with data is an event; one with only <c>id:</c> moves the resume point.</summary>
    public bool IsEvent => Data is not null;

    public JsonElement Json => JsonDocument.Parse(Data!).RootElement.Clone();

    public string? Str(string property) =>
        Json.TryGetProperty(property, out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;

    public override string ToString() => $"{Id} {Type} {Data}";
}

/// <summary>
/// A client of <c>GET /api/v1/events</c> that parses the stream the way the SSE spec says (field lines,
/// blank line ends a block, <c>:</c> comment lines) and keeps the last id like an EventSource does.
/// Shared by the functional (test server) and stress (Kestrel) tiers.
/// </summary>
public sealed class SseClient : IAsyncDisposable
{
    private readonly HttpResponseMessage _response;
    private readonly StreamReader _reader;
    private readonly CancellationTokenSource _life = new();
    private bool _disposed;

    private SseClient(HttpResponseMessage response, Stream body)
    {
        _response = response;
        _reader = new StreamReader(body, bufferSize: 64 * 1024);
    }

    public HttpResponseMessage Response => _response;

    /// <summary>The last id seen on the stream (an event's or an id-only frame's), as EventSource keeps it.</summary>
    public long? LastEventId { get; private set; }

    /// <summary>Comment lines (heartbeats) seen so far.</summary>
    public int Comments { get; private set; }

    public bool Ended { get; private set; }

    /// <summary>Opens the stream; fails the test unless it answers 200 text/event-stream.</summary>
    public static async Task<SseClient> OpenAsync(HttpClient http, string url, long? lastEventId = null, TimeSpan? timeout = null)
    {
        var response = await SendAsync(http, url, lastEventId, timeout);
        if ((int)response.StatusCode != 200)
            Assert.Fail($"GET {url}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        return new SseClient(response, await response.Content.ReadAsStreamAsync());
    }

    /// <summary>Sends the request and returns the response as it is (headers read, body not).</summary>
    public static async Task<HttpResponseMessage> SendAsync(HttpClient http, string url, long? lastEventId = null, TimeSpan? timeout = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        if (lastEventId is { } id) request.Headers.TryAddWithoutValidation("Last-Event-ID", id.ToString(CultureInfo.InvariantCulture));
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(15));
        return await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
    }

    /// <summary>The next block (event, id-only frame, or comment-only block), or null once the stream has ended.</summary>
    public async Task<SseFrame?> NextFrameAsync(TimeSpan timeout)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(_life.Token);
        cts.CancelAfter(timeout);
        long? id = null;
        string? type = null, data = null;
        var comments = 0;
        var any = false;
        while (true)
        {
            string? line;
            try
            {
                line = await _reader.ReadLineAsync(cts.Token);
            }
            catch (OperationCanceledException) when (!_life.IsCancellationRequested)
            {
                throw new TimeoutException($"no complete event within {timeout.TotalSeconds:0.#} s (last id {LastEventId})");
            }
            catch (Exception e) when (e is IOException or HttpRequestException)
            {
                line = null; // the server dropped the connection
            }
            if (line is null)
            {
                Ended = true;
                return any ? new SseFrame(id, type, data, comments) : null;
            }
            if (line.Length == 0)
            {
                if (!any) continue;
                return new SseFrame(id, type, data, comments);
            }
            any = true;
            if (line[0] == ':')
            {
                comments++;
                Comments++;
                continue;
            }
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var field = colon < 0 ? line : line[..colon];
            var value = colon < 0 ? "" : line[(colon + 1)..].TrimStart(' ');
            switch (field)
            {
                case "id":
                    id = long.Parse(value, CultureInfo.InvariantCulture);
                    LastEventId = id;
                    break;
                case "event":
                    type = value;
                    break;
                case "data":
                    data = data is null ? value : data + "\n" + value;
                    break;
            }
        }
    }

    /// <summary>The next event (skipping id-only frames and comments); fails the test at the deadline or the stream's end.</summary>
    public async Task<SseFrame> NextEventAsync(TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(15));
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) Assert.Fail($"no event within {timeout ?? TimeSpan.FromSeconds(15)} (last id {LastEventId})");
            var frame = await NextFrameAsync(left);
            if (frame is null) Assert.Fail($"the stream ended while an event was expected (last id {LastEventId})");
            if (frame.IsEvent) return frame;
        }
    }

    /// <summary>The next <paramref name="count"/> events.</summary>
    public async Task<List<SseFrame>> EventsAsync(int count, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(15));
        var events = new List<SseFrame>(count);
        while (events.Count < count)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) Assert.Fail($"{events.Count} of {count} events arrived in time; last: {events.LastOrDefault()}");
            events.Add(await NextEventAsync(left));
        }
        return events;
    }

    /// <summary>Reads until the stream ends and returns the events on the way; fails if it does not end in time.</summary>
    public async Task<List<SseFrame>> ReadToEndAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        var events = new List<SseFrame>();
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) Assert.Fail($"the stream did not end within {timeout}; {events.Count} events read, last id {LastEventId}");
            SseFrame? frame;
            try { frame = await NextFrameAsync(left); }
            catch (TimeoutException) { continue; }
            if (frame is null) return events;
            if (frame.IsEvent) events.Add(frame);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        await _life.CancelAsync();
        _reader.Dispose();
        _response.Dispose();
        _life.Dispose();
    }
}
