using System.Buffers;
using System.Text.Json;

namespace Virtd.Core.Events;

/// <summary>An event as one flat JSON object: <c>id</c>, <c>type</c>, <c>time</c>, then the payload's own members.</summary>
public static class EventJson
{
    public static byte[] Serialize(VirtdEvent e)
    {
        var payload = JsonSerializer.SerializeToUtf8Bytes(e.Data, VirtdJson.Options.GetTypeInfo(e.Data.GetType()));
        var head = new ArrayBufferWriter<byte>(payload.Length + 96);
        using (var w = new Utf8JsonWriter(head))
        {
            w.WriteStartObject();
            w.WriteNumber("id", e.Id);
            w.WriteString("type", e.Type);
            w.WriteString("time", e.Time);
            if (payload.Length == 0 || payload[0] != (byte)'{')
            {
                // Not an object (never so for the daemon's own payloads): nested, so the result stays one object.
                w.WritePropertyName("data");
                w.WriteRawValue(payload, skipInputValidation: true);
            }
            w.WriteEndObject();
        }
        var written = head.WrittenSpan;
        if (payload.Length <= 2 || payload[0] != (byte)'{') return written.ToArray();
        // {"id":1,"type":"t","time":"…"} + {"a":1} → {"id":1,"type":"t","time":"…","a":1}
        var json = new byte[written.Length + payload.Length - 1];
        written[..^1].CopyTo(json);
        json[written.Length - 1] = (byte)',';
        payload.AsSpan(1).CopyTo(json.AsSpan(written.Length));
        return json;
    }
}
