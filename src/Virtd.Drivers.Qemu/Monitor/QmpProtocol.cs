using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Virtd.Drivers.Qemu.Monitor;

/// <summary>One message from QEMU's monitor.</summary>
public abstract record QmpMessage;

/// <summary>The first message of a connection: <c>{"QMP": {"version": ..., "capabilities": [...]}}</c>.</summary>
public sealed record QmpGreeting(string Version, IReadOnlyList<string> Capabilities) : QmpMessage;

/// <summary>A successful reply: <c>{"return": ..., "id": N}</c>.</summary>
public sealed record QmpReturn(long? Id, JsonElement Value) : QmpMessage;

/// <summary>A failed command: <c>{"error": {"class": ..., "desc": ...}, "id": N}</c>.</summary>
public sealed record QmpError(long? Id, string Class, string Description) : QmpMessage;

/// <summary>An asynchronous event: <c>{"event": NAME, "data": {...}, "timestamp": {...}}</c>.</summary>
public sealed record QmpEvent(string Name, JsonElement Data, DateTimeOffset? Timestamp) : QmpMessage
{
    /// <summary>A string member of <see cref="Data"/>, or null.</summary>
    public string? DataString(string name) =>
        Data.ValueKind == JsonValueKind.Object && Data.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>A boolean member of <see cref="Data"/>, or null.</summary>
    public bool? DataBool(string name) =>
        Data.ValueKind == JsonValueKind.Object && Data.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? v.GetBoolean() : null;
}

/// <summary>A line that is not a QMP message (not JSON, or JSON of no known shape).</summary>
public sealed record QmpGarbage(string Text, string Why) : QmpMessage;

/// <summary>
/// QMP framing, encoding and parsing: pure code, no I/O. Messages are JSON objects, one per line
/// (QEMU ends each with CR LF); we send commands the same way, each with a numeric <c>id</c>.
/// </summary>
public static class QmpProtocol
{
    /// <summary>A line longer than this is not QMP: the connection is dropped rather than buffered without end.</summary>
    public const int MaxLineBytes = 4 * 1024 * 1024;

    private static readonly JsonDocumentOptions ParseOptions = new() { MaxDepth = 64 };

    /// <summary>
    /// <c>{"execute": command, "arguments": {...}, "id": id}</c> and a newline. Argument values are written
    /// as JSON strings, numbers or objects by the serializer, so no user text can change the message's shape.
    /// </summary>
    public static byte[] EncodeCommand(string command, long id, JsonObject? arguments = null)
    {
        var buffer = new ArrayBufferWriter<byte>(64);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("execute", command);
            if (arguments is not null)
            {
                w.WritePropertyName("arguments");
                arguments.WriteTo(w);
            }
            w.WriteNumber("id", id);
            w.WriteEndObject();
        }
        buffer.Write("\n"u8);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Takes one complete line (without its CR LF) off the front of <paramref name="buffer"/>.
    /// False when no complete line is there yet.
    /// </summary>
    public static bool TryReadLine(ref ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> line)
    {
        var newline = buffer.PositionOf((byte)'\n');
        if (newline is null)
        {
            line = default;
            return false;
        }
        line = buffer.Slice(0, newline.Value);
        buffer = buffer.Slice(buffer.GetPosition(1, newline.Value));
        if (line.Length > 0 && EndsWithCarriageReturn(line)) line = line.Slice(0, line.Length - 1);
        return true;
    }

    private static bool EndsWithCarriageReturn(ReadOnlySequence<byte> line)
    {
        var last = line.Slice(line.Length - 1);
        return last.FirstSpan[0] == (byte)'\r';
    }

    /// <summary>True when a line holds only whitespace (QEMU never sends one, but a peer may).</summary>
    public static bool IsBlank(ReadOnlySequence<byte> line)
    {
        foreach (var segment in line)
        {
            foreach (var b in segment.Span)
            {
                if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r')) return false;
            }
        }
        return true;
    }

    public static QmpMessage Parse(ReadOnlySequence<byte> line)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(line, ParseOptions); }
        catch (JsonException e) { return new QmpGarbage(Preview(line), "not JSON: " + e.Message); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return new QmpGarbage(Preview(line), "not a JSON object");
            var id = ReadId(root);
            if (root.TryGetProperty("return", out var ret)) return new QmpReturn(id, ret.Clone());
            if (root.TryGetProperty("error", out var err))
            {
                var cls = err.ValueKind == JsonValueKind.Object && err.TryGetProperty("class", out var c) && c.ValueKind == JsonValueKind.String
                    ? c.GetString()! : "GenericError";
                var desc = err.ValueKind == JsonValueKind.Object && err.TryGetProperty("desc", out var d) && d.ValueKind == JsonValueKind.String
                    ? d.GetString()! : err.GetRawText();
                return new QmpError(id, cls, desc);
            }
            if (root.TryGetProperty("event", out var ev) && ev.ValueKind == JsonValueKind.String)
            {
                var data = root.TryGetProperty("data", out var dt) ? dt.Clone() : default;
                return new QmpEvent(ev.GetString()!, data, ReadTimestamp(root));
            }
            if (root.TryGetProperty("QMP", out var qmp) && qmp.ValueKind == JsonValueKind.Object)
                return new QmpGreeting(ReadVersion(qmp), ReadCapabilities(qmp));
            return new QmpGarbage(Preview(line), "a JSON object of no QMP shape");
        }
    }

    private static long? ReadId(JsonElement root) =>
        root.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.Number && id.TryGetInt64(out var n) ? n : null;

    private static DateTimeOffset? ReadTimestamp(JsonElement root)
    {
        if (!root.TryGetProperty("timestamp", out var ts) || ts.ValueKind != JsonValueKind.Object) return null;
        if (!ts.TryGetProperty("seconds", out var s) || !s.TryGetInt64(out var seconds)) return null;
        var micros = ts.TryGetProperty("microseconds", out var m) && m.TryGetInt64(out var us) ? us : 0;
        if (seconds is < 0 or > 253_402_300_799) return null;
        return DateTimeOffset.FromUnixTimeSeconds(seconds).AddTicks(micros * 10);
    }

    /// <summary>"7.2.22" from <c>{"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ...}</c>.</summary>
    public static string ReadVersion(JsonElement qmp)
    {
        var version = qmp.ValueKind == JsonValueKind.Object && qmp.TryGetProperty("version", out var v) ? v : qmp;
        if (version.ValueKind != JsonValueKind.Object || !version.TryGetProperty("qemu", out var q) || q.ValueKind != JsonValueKind.Object) return "unknown";
        static long Part(JsonElement e, string name) => e.TryGetProperty(name, out var p) && p.TryGetInt64(out var n) ? n : 0;
        return $"{Part(q, "major")}.{Part(q, "minor")}.{Part(q, "micro")}";
    }

    private static IReadOnlyList<string> ReadCapabilities(JsonElement qmp)
    {
        if (!qmp.TryGetProperty("capabilities", out var caps) || caps.ValueKind != JsonValueKind.Array) return [];
        return caps.EnumerateArray().Where(c => c.ValueKind == JsonValueKind.String).Select(c => c.GetString()!).ToList();
    }

    private static string Preview(ReadOnlySequence<byte> line)
    {
        var slice = line.Length > 200 ? line.Slice(0, 200) : line;
        return Encoding.UTF8.GetString(slice);
    }
}
