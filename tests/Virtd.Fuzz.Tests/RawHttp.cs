using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Virtd.Fuzz.Tests;

/// <summary>
/// HTTP/1.1 by hand for a chunked body too large to be read: it keeps sending while it reads the answer, as curl
/// does. (HttpClient gives up with "broken pipe" once the server answers early and stops reading, and never shows
/// the answer.)
/// </summary>
public static class RawHttp
{
    public static async Task<HttpResponseMessage> SendChunkedAsync(Uri baseAddress, FuzzRequest r, string? token, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        using var client = new TcpClient();
        await client.ConnectAsync(baseAddress.Host, baseAddress.Port, cts.Token);
        var stream = client.GetStream();
        var head = new StringBuilder();
        head.Append($"{r.Method} {r.Path} HTTP/1.1\r\nHost: {baseAddress.Authority}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
        if (token is not null) head.Append($"Authorization: Bearer {token}\r\n");
        if (r.ContentType is not null) head.Append($"Content-Type: {r.ContentType}\r\n");
        foreach (var (k, v) in r.Headers) head.Append($"{k}: {v}\r\n");
        head.Append("\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head.ToString()), cts.Token);

        var writer = Task.Run(async () =>
        {
            try
            {
                var chunk = new byte[64 * 1024];
                Array.Fill(chunk, (byte)'x');
                Encoding.ASCII.GetBytes("{\"x\":\"").CopyTo(chunk, 0);
                for (var sent = 0; sent < r.ChunkedBytes; sent += chunk.Length)
                {
                    var n = Math.Min(chunk.Length, r.ChunkedBytes - sent);
                    await stream.WriteAsync(Encoding.ASCII.GetBytes($"{n:x}\r\n"), cts.Token);
                    await stream.WriteAsync(chunk.AsMemory(0, n), cts.Token);
                    await stream.WriteAsync("\r\n"u8.ToArray(), cts.Token);
                    if (sent == 0) Encoding.ASCII.GetBytes("xxxxxx").CopyTo(chunk, 0);
                }
                await stream.WriteAsync("0\r\n\r\n"u8.ToArray(), cts.Token);
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { } // the server stopped reading
        });

        var buffer = new MemoryStream();
        var read = new byte[16 * 1024];
        int got;
        while ((got = await stream.ReadAsync(read, cts.Token)) > 0)
        {
            buffer.Write(read, 0, got);
            // An event stream does not end: its head is the answer.
            var soFar = Encoding.Latin1.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
            if (soFar.Contains("\r\n\r\n", StringComparison.Ordinal) && soFar.Contains("text/event-stream", StringComparison.OrdinalIgnoreCase)) break;
        }
        client.Close();
        await writer.WaitAsync(TimeSpan.FromSeconds(10));
        return Parse(buffer.ToArray(), new HttpRequestMessage(new HttpMethod(r.Method), new Uri(baseAddress, r.Path)));
    }

    private static HttpResponseMessage Parse(byte[] bytes, HttpRequestMessage request)
    {
        var text = Encoding.Latin1.GetString(bytes);
        var end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0) throw new HttpRequestException($"an incomplete answer: {text}");
        var lines = text[..end].Split("\r\n");
        var status = int.Parse(lines[0].Split(' ')[1]);
        var headers = lines.Skip(1).Select(l => l.Split(':', 2)).ToDictionary(p => p[0].Trim(), p => p[1].Trim(), StringComparer.OrdinalIgnoreCase);
        var body = bytes.AsSpan(end + 4).ToArray();
        if (headers.TryGetValue("Transfer-Encoding", out var te) && te.Contains("chunked", StringComparison.OrdinalIgnoreCase)) body = Dechunk(body);
        var response = new HttpResponseMessage((HttpStatusCode)status) { RequestMessage = request, Content = new ByteArrayContent(body) };
        foreach (var (k, v) in headers)
            if (!response.Headers.TryAddWithoutValidation(k, v)) response.Content.Headers.TryAddWithoutValidation(k, v);
        return response;
    }

    private static byte[] Dechunk(byte[] body)
    {
        var result = new MemoryStream();
        var i = 0;
        while (i < body.Length)
        {
            var eol = Array.IndexOf(body, (byte)'\n', i);
            if (eol < 0) break;
            var size = Convert.ToInt32(Encoding.ASCII.GetString(body, i, eol - i).Trim().Split(';')[0], 16);
            if (size == 0) break;
            result.Write(body, eol + 1, size);
            i = eol + 1 + size + 2;
        }
        return result.ToArray();
    }
}
