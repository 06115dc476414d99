using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;

namespace Virtd.Fuzz.Tests;

/// <summary>A request as the fuzzer sends it. <see cref="Body"/> is raw bytes; <see cref="ChunkedBytes"/> &gt; 0 streams that many bytes without a length.</summary>
public sealed record FuzzRequest(string Method, string Path, List<KeyValuePair<string, string>> Headers, byte[]? Body, int ChunkedBytes,
    string? ContentType, ApiOperation? Operation, string Shape)
{
    /// <summary>For a valid define or update: the JSON sent, which the model applies when the daemon accepts it.</summary>
    public string? Definition { get; init; }

    public bool NoCredentials { get; init; }

    public override string ToString()
    {
        var body = ChunkedBytes > 0 ? $" [{ChunkedBytes} bytes chunked]"
            : Body is null ? "" : " " + (Body.Length > 300 ? Encoding.UTF8.GetString(Body, 0, 300) + $"… ({Body.Length} bytes)" : Encoding.UTF8.GetString(Body));
        var headers = string.Join(" ", Headers.Select(h => $"{h.Key}: {h.Value}"));
        return $"{Method} {Path} ({Shape}) ct={ContentType ?? "-"} {headers}{body}";
    }
}

/// <summary>What the fuzzer has seen of the daemon, to aim some requests at things that exist.</summary>
public sealed class Observed
{
    public List<string> JobIds { get; } = [];
    public List<string> Cursors { get; } = [];
    public Dictionary<string, string> ETags { get; } = [];
    public List<string> Uuids { get; } = [];
    public List<string> IdempotencyKeys { get; } = [];
}

/// <summary>
/// Requests drawn with CsCheck's generators from one PCG, so a seed gives the same sequence: documented operations
/// with valid and broken inputs (bodies built from the document's schemas, then mutated), random methods and paths,
/// and hostile headers and query values.
/// </summary>
public sealed class RequestGenerator(ApiDocument doc, PCG pcg, Observed seen, string imagesDirectory)
{
    public const int Names = 12;
    private static readonly string[] Methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"];

    private static readonly string[] ContentTypes =
    [
        "application/json", "application/json; charset=utf-8", "application/json; charset=\"utf-8\"", "application/json;charset=UTF-8",
        "application/json; charset=bogus", "application/json; charset=utf-16", "application/json; charset=", "application/json;;",
        "text/plain", "application/xml", "application/merge-patch+json", "application/problem+json", "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded", "application/json; foo=bar", "APPLICATION/JSON", "*/*", "application/", "garbage",
    ];

    private T Draw<T>(Gen<T> gen) => gen.Generate(pcg, null!, out _);
    private int Int(int lo, int hi) => Draw(Gen.Int[lo, hi]);
    private bool Chance(int percent) => Int(1, 100) <= percent;
    private T Pick<T>(IReadOnlyList<T> items) => items[Int(0, items.Count - 1)];
    private string Text(int max = 20) => Draw(Gen.String[Gen.Char, 0, max]);

    public FuzzRequest Next()
    {
        var roll = Int(1, 100);
        if (roll <= 50) return Documented(hostileBody: false, hostileParams: Chance(15));
        if (roll <= 72) return Documented(hostileBody: true, hostileParams: Chance(20));
        if (roll <= 80) return Documented(hostileBody: Chance(30), hostileParams: true);
        if (roll <= 88) return WrongMethod();
        if (roll <= 95) return RandomPath();
        return Credentials();
    }

    private FuzzRequest Documented(bool hostileBody, bool hostileParams)
    {
        var op = Pick(doc.Operations);
        var path = FillPath(op, hostileParams && Chance(30));
        var query = new List<string>();
        var headers = new List<KeyValuePair<string, string>>();
        foreach (var p in op.Parameters)
        {
            if (p.In == "query" && Chance(hostileParams ? 80 : 50)) query.Add($"{p.Name}={Uri.EscapeDataString(QueryValue(p, hostileParams))}");
            if (p.In == "header" && Chance(hostileParams ? 80 : 30)) headers.Add(new(p.Name, HeaderValue(p.Name, hostileParams)));
        }
        if (hostileParams && Chance(30)) query.Add($"{Pick(new[] { "wait", "limit", "x", "after", "state" })}={Uri.EscapeDataString(Ascii(12))}");
        if (hostileParams && Chance(20)) headers.Add(new(Pick(new[] { "Last-Event-ID", "If-Match", "Idempotency-Key", "Accept", "Origin" }), Ascii(40)));
        // Guard: a valid long wait would hold the sequence; the ones above 2 s are sent only out of range.
        var full = path + (query.Count > 0 ? "?" + string.Join('&', query) : "");

        if (op.BodySchema is null && !Chance(5)) return new FuzzRequest(op.Method, full, headers, null, 0, null, op, hostileParams ? "params" : "valid");
        var schema = op.BodySchema ?? new JsonObject();
        if (!hostileBody)
        {
            var node = Valid(schema, "");
            if (op.Template.StartsWith("/api/v1/domains", StringComparison.Ordinal) && op.Method is "PUT" && op.Template.EndsWith("{id}", StringComparison.Ordinal) && node is JsonObject o
                && !path.Contains('%') && Chance(80))
                o["name"] = Uri.UnescapeDataString(path[(path.LastIndexOf('/') + 1)..]); // mostly an update of that domain
            var json = node?.ToJsonString() ?? "null";
            var ct = hostileParams && Chance(50) ? Pick(ContentTypes) : "application/json";
            return new FuzzRequest(op.Method, full, headers, Encoding.UTF8.GetBytes(json), 0, ct, op, "valid")
            {
                Definition = schema == doc.Schema("DomainDefinition") ? json : null,
            };
        }
        return Hostile(op, full, headers, schema);
    }

    private FuzzRequest Hostile(ApiOperation op, string path, List<KeyValuePair<string, string>> headers, JsonObject schema)
    {
        string ct = Chance(80) ? "application/json" : Pick(ContentTypes);
        FuzzRequest With(byte[] body, string shape) => new(op.Method, path, headers, body, 0, ct, op, shape);
        var valid = Valid(schema, "") as JsonObject ?? new JsonObject();
        switch (Int(1, 15))
        {
            case 1: // a property of the wrong type
            {
                if (valid.Count == 0) goto case 3;
                var key = Pick(valid.Select(p => p.Key).ToList());
                valid[key] = WrongType(valid[key]);
                return With(Utf8(valid.ToJsonString()), "wrong-type");
            }
            case 2: // null where a value belongs
            {
                if (valid.Count == 0) goto case 3;
                valid[Pick(valid.Select(p => p.Key).ToList())] = null;
                return With(Utf8(valid.ToJsonString()), "null");
            }
            case 3: // a duplicate key
            {
                var text = valid.ToJsonString();
                var key = valid.Count > 0 ? Pick(valid.Select(p => p.Key).ToList()) : "name";
                var dup = $"\"{key}\":{WrongType(null).ToJsonString()},";
                return With(Utf8("{" + dup + text[1..]), "duplicate-key");
            }
            case 4: // a lone surrogate, escaped or as raw bytes
            {
                var key = valid.ContainsKey("description") ? "description" : valid.ContainsKey("name") ? "name" : "token";
                if (Chance(50)) return With(Utf8(SetRaw(valid, key, "\"a\\ud800b\"")), "lone-surrogate-escape");
                var bytes = Utf8(SetRaw(valid, key, "\"a\u0007b\""));
                var i = Array.IndexOf(bytes, (byte)7);
                return With([.. bytes[..i], 0xED, 0xA0, 0x80, .. bytes[(i + 1)..]], "lone-surrogate-bytes");
            }
            case 5: // nested 33 deep
            {
                var deep = new string('[', 33) + new string(']', 33);
                if (Chance(50)) deep = string.Concat(Enumerable.Repeat("{\"a\":", 33)) + "1" + new string('}', 33);
                var key = valid.Count > 0 && Chance(70) ? Pick(valid.Select(p => p.Key).ToList()) : "deep";
                return With(Utf8(SetRaw(valid, key, deep)), "depth-33");
            }
            case 6: // a huge number
            {
                var key = valid.Count > 0 ? Pick(valid.Select(p => p.Key).ToList()) : "timeout";
                var n = Pick(new[] { "1e400", "-1e400", "123456789012345678901234567890", "2147483648", "-2147483649", "1.5", "-0", "1e-400", "0x10", "NaN", "Infinity", "01" });
                return With(Utf8(SetRaw(valid, key, n)), "huge-number");
            }
            case 7: // 2 MiB, chunked
                return new FuzzRequest(op.Method, path, headers, null, 2 * 1024 * 1024 + Int(0, 1000), ct, op, "2MiB-chunked");
            case 8: // bytes that are not UTF-8
            {
                var bytes = Utf8(SetRaw(valid, valid.ContainsKey("name") ? "name" : "x", "\"a\u0007b\""));
                var i = Array.IndexOf(bytes, (byte)7);
                byte[] bad = Pick(new byte[][] { [0xFF], [0xC3, 0x28], [0xE2, 0x82], [0xF0, 0x90, 0x80], [0xC0, 0xAF], [0x80] });
                return With([.. bytes[..i], .. bad, .. bytes[(i + 1)..]], "not-utf8");
            }
            case 9: // unknown properties
                valid[Pick(new[] { "extra", "__proto__", "$type", "Name", "NAME", "memorymib" })] = WrongType(null);
                return With(Utf8(valid.ToJsonString()), "unknown-field");
            case 10: // not an object at all
                return With(Utf8(Pick(new[] { "", "null", "[]", "0", "\"x\"", "true", "{", "{\"name\":", "}", "[{}]", "\uFEFF{}", "{}{}", "{} x", "\u0000" })), "not-an-object");
            case 11: // truncated valid JSON
            {
                var text = valid.ToJsonString();
                return With(Utf8(text[..Int(0, Math.Max(0, text.Length - 1))]), "truncated");
            }
            case 12: // random text
                return With(Utf8(Text(200)), "random-text");
            case 13: // out-of-range values for known fields
            {
                foreach (var (k, v) in new (string, JsonNode?)[] { ("memoryMiB", Int(-5, 15)), ("vcpus", Int(-3, 0)), ("timeout", Pick(new[] { -1, 3601, 301, int.MaxValue })),
                             ("name", Pick(new[] { "", "-x", "a/b", "..", new string('a', 64), Guid.NewGuid().ToString(), "a b", "ä" })), ("role", "root"),
                             ("expiresAt", Pick(new[] { "yesterday", "1999-01-01T00:00:00Z", "" })), ("driver", "xen"), ("machine", "virt") })
                    if (valid.ContainsKey(k) || Chance(10)) valid[k] = v?.DeepClone();
                return With(Utf8(valid.ToJsonString()), "out-of-range");
            }
            case 14: // a valid body with a hostile content type or none
                return new FuzzRequest(op.Method, path, headers, Utf8(valid.ToJsonString()), 0, Chance(20) ? null : Pick(ContentTypes), op, "content-type");
            default: // a big but allowed body: a long string
                valid[valid.ContainsKey("description") ? "description" : "x"] = new string('x', Int(1000, 900_000));
                return With(Utf8(valid.ToJsonString()), "big");
        }
    }

    private FuzzRequest WrongMethod()
    {
        var op = Pick(doc.Operations);
        var path = FillPath(op, false);
        var method = Pick(Methods);
        var body = Chance(50) ? Utf8("{}") : null;
        return new FuzzRequest(method, path, [], body, 0, body is null ? null : "application/json", null, "method");
    }

    private FuzzRequest RandomPath()
    {
        var paths = new[]
        {
            "/", "/api", "/api/v1", "/api/v2/domains", "/api/v1/domains/", "/api/v1/domains//start", "/api/v1/domains/vm0/start/extra",
            "/api/v1/domains/vm0/%2e%2e/%2e%2e/etc/passwd", "/api/v1/../healthz", "/api/v1/domains/%00", "/api/v1/domains/%ff%fe",
            "/api/v1/domains/" + new string('a', 2000), "/api/v1/jobs/" + Guid.NewGuid() + "/x", "/swagger/../api/v1/host",
            "/api/v1/events/x", "/api/v1/domains/vm0/gate/x", "/openapi/v2.json", "/api/v1/tokens/%2F", "/API/V1/HOST", "/api/v1/host/",
            "/api/v1/domains/" + Uri.EscapeDataString(Text(10)), "/" + Uri.EscapeDataString(Text(30)),
        };
        var method = Chance(70) ? "GET" : Pick(Methods);
        return new FuzzRequest(method, Pick(paths), [], null, 0, null, null, "path");
    }

    private FuzzRequest Credentials()
    {
        var op = Pick(doc.Operations.Where(o => o.BodySchema is null && o.Method == "GET" && o.Template != "/api/v1/events").ToList());
        var path = FillPath(op, false);
        var headers = new List<KeyValuePair<string, string>>();
        var none = Chance(60);
        if (!none) headers.Add(new("Authorization", Pick(new[] { "Bearer virtd_nottoken", "Basic YTpi", "Bearer", "bearer  ", "Token x" })));
        return new FuzzRequest("GET", path, headers, null, 0, null, op, "credentials") { NoCredentials = true };
    }

    private string FillPath(ApiOperation op, bool hostile)
    {
        var parts = new List<string>();
        foreach (var s in op.Segments)
        {
            if (!s.StartsWith('{')) { parts.Add(s); continue; }
            var value = s switch
            {
                "{id}" => hostile ? Pick(new[] { "..", "-bad", new string('x', 300), "a.b", Text(8), "00000000-0000-0000-0000-000000000000" })
                    : Chance(85) ? $"vm{Int(0, Names - 1)}" : seen.Uuids.Count > 0 && Chance(60) ? Pick(seen.Uuids) : Guid.NewGuid().ToString(),
                "{jobId}" => !hostile && seen.JobIds.Count > 0 && Chance(75) ? seen.JobIds[^Int(1, Math.Min(20, seen.JobIds.Count))]
                    : Chance(50) ? Guid.NewGuid().ToString() : Text(10),
                "{name}" => hostile ? Text(10) : $"fz{Int(0, 3)}",
                _ => Text(5),
            };
            parts.Add(Uri.EscapeDataString(value));
        }
        return "/" + string.Join('/', parts);
    }

    private string QueryValue(ApiParameter p, bool hostile)
    {
        if (hostile)
        {
            return p.Name switch
            {
                "wait" => Pick(new[] { "2147483648", "-1", "301", "abc", "1e3", "", "0x1", "9999999999999" }),
                "limit" => Pick(new[] { "-1", "0", "10001", "abc", "2147483648", "", "1.5" }),
                "after" => Pick(new[] { "garbage", "", "ZG9tYWluczo", "am9iczo", "%%%", new string('A', 2000) }),
                "state" or "driver" => Pick(new[] { "bogus", "RUNNING", "", "running,paused" }),
                "lastEventId" => Pick(new[] { "-5", "abc", "99999999999999999999", "" }),
                _ => Text(12),
            };
        }
        return p.Name switch
        {
            "wait" => (Chance(85) ? 0 : 1).ToString(CultureInfo.InvariantCulture), // a job blocked behind another would hold the sequence for the whole wait
            "limit" => Int(1, 30).ToString(CultureInfo.InvariantCulture),
            "after" => seen.Cursors.Count > 0 ? Pick(seen.Cursors) : "",
            "state" => Pick(EnumOf(p.Schema) is { Count: > 0 } e ? e : ["running"]),
            "driver" => Pick(new[] { "simulated", "qemu" }),
            "domain" => $"vm{Int(0, Names - 1)}",
            "types" => Pick(new[] { "domain", "job", "domain.lifecycle,job.finished", "daemon" }),
            "lastEventId" => Int(0, 100).ToString(CultureInfo.InvariantCulture),
            _ => Text(5),
        };
    }

    private string HeaderValue(string name, bool hostile) => name switch
    {
        "If-Match" => hostile ? Pick(new[] { "garbage", "W/\"x\"", "*", "\"\"", "\"abc\"", ",", "\"1\", \"2\"" })
            : seen.ETags.Count > 0 ? Pick(seen.ETags.Values.ToList()) : "\"0\"",
        "Idempotency-Key" => hostile ? Pick(new[] { "", new string('k', 300), "a b", "k~", Ascii(20) })
            : seen.IdempotencyKeys.Count > 0 && Chance(30) ? Pick(seen.IdempotencyKeys) : Remember($"key-{Int(0, 500)}"),
        "Last-Event-ID" => hostile ? Pick(new[] { "garbage", "-1", "99999999999999999999", "1.5", "" }) : Int(0, 50).ToString(CultureInfo.InvariantCulture),
        _ => Ascii(10),
    };

    private string Remember(string key)
    {
        seen.IdempotencyKeys.Add(key);
        return key;
    }

    /// <summary>Printable ASCII (HTTP header values can carry no more).</summary>
    private string Ascii(int max)
    {
        var n = Int(0, max);
        var sb = new StringBuilder(n);
        for (var i = 0; i < n; i++) sb.Append((char)Int(0x20, 0x7e));
        return sb.ToString();
    }

    /// <summary>A value that fits the schema; known fields get values the daemon accepts most of the time.</summary>
    private JsonNode? Valid(JsonObject schema, string name)
    {
        schema = doc.Resolve(schema);
        if (schema["oneOf"] is JsonArray oneOf)
        {
            var options = oneOf.Select(o => o!.AsObject()).Where(o => o["type"]?.ToString() != "null").ToList();
            return options.Count == 0 || Chance(10) ? null : Valid(options[0], name);
        }
        if (EnumOf(schema) is { Count: > 0 } values) return Pick(values);
        var types = schema["type"] switch
        {
            JsonArray a => a.Select(t => t!.GetValue<string>()).ToList(),
            JsonValue v => [v.GetValue<string>()],
            _ => ["object"],
        };
        if (types.Contains("null") && Chance(10)) return null;
        switch (name)
        {
            case "hangMonitor": return Chance(5); // a hung monitor holds its domain for Simulated:MonitorTimeout
            case "ignoresAcpi" or "ignoresSigterm": return Chance(15);
            case "name": return $"vm{Int(0, Names - 1)}"; // a token's name is set with its object below
            case "memoryMiB": return Int(16, 2048);
            case "vcpus": return Int(1, 4);
            case "bootDelayMs" or "acpiShutdownDelayMs": return Int(0, 20);
            case "timeout": return Int(0, 3);
            case "uuid": return seen.Uuids.Count > 0 && Chance(30) ? Pick(seen.Uuids) : Chance(50) ? null : Guid.NewGuid().ToString();
            case "path": return Chance(70) ? Path.Combine(imagesDirectory, $"disk{Int(0, 2)}.img") : "/etc/" + Text(5);
            case "kernel" or "initrd": return Chance(70) ? null : Path.Combine(imagesDirectory, "kernel");
            case "cmdline": return Chance(50) ? null : "console=ttyS0 " + Ascii(20);
            case "description": return Chance(50) ? null : Text(40);
            case "expiresAt": return DateTimeOffset.UtcNow.AddHours(Int(1, 48)).ToString("O");
            case "token": return Chance(50) ? "virtd_" + Ascii(10) : Ascii(20);
            case "capacity": return Chance(50) ? Int(0, 1 << 20) : $"{Int(1, 64)}MiB";
            // A disk by volume takes the volume's recorded format, which the model does not follow: disks here are by path.
            case "volume": return null;
            case "backingVolume" or "from": return Chance(80) ? null : $"default/vm{Int(0, Names - 1)}";
        }
        if (types.Contains("object"))
        {
            var o = new JsonObject();
            foreach (var (key, prop) in schema["properties"]?.AsObject() ?? [])
                if (key == "name" || Chance(75)) o[key] = Valid(prop!.AsObject(), key);
            if (schema == doc.Schema("DomainDefinition")) o["driver"] = Chance(90) ? "simulated" : "qemu";
            if (schema == doc.Schema("CreateTokenRequest")) o["name"] = $"fz{Int(0, 3)}";
            return o;
        }
        if (types.Contains("array"))
        {
            var a = new JsonArray();
            var n = Int(0, 2);
            for (var i = 0; i < n; i++) a.Add(Valid(schema["items"]!.AsObject(), name + "[]"));
            return a;
        }
        if (types.Contains("integer"))
        {
            var min = (int)Math.Clamp(schema["minimum"]?.GetValue<long>() ?? 0, int.MinValue, int.MaxValue);
            var max = (int)Math.Clamp(schema["maximum"]?.GetValue<long>() ?? 100, int.MinValue, int.MaxValue);
            return Int(min, Math.Min(max, min + 100));
        }
        if (types.Contains("boolean")) return Chance(50);
        if (types.Contains("number")) return Draw(Gen.Double[0, 100]);
        return schema["format"]?.ToString() == "uuid" ? Guid.NewGuid().ToString() : Text(10);
    }

    private static List<string> EnumOf(JsonObject schema) =>
        schema["enum"] is JsonArray e ? e.Select(v => v!.GetValue<string>()).ToList() : [];

    private JsonNode WrongType(JsonNode? current) => Int(1, 6) switch
    {
        1 => JsonValue.Create(Text(8))!,
        2 => JsonValue.Create(Int(-1000, 1000))!,
        3 => JsonValue.Create(Chance(50))!,
        4 => new JsonArray(JsonValue.Create(1), JsonValue.Create("x")),
        5 => new JsonObject { ["a"] = current?.DeepClone() },
        _ => JsonValue.Create(Draw(Gen.Double[-1e9, 1e9]))!,
    };

    /// <summary>The object's JSON with <paramref name="key"/> set to the raw text <paramref name="raw"/>.</summary>
    private static string SetRaw(JsonObject o, string key, string raw)
    {
        o[key] = "\u0001MARK\u0001";
        return o.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })
            .Replace("\"\\u0001MARK\\u0001\"", raw, StringComparison.Ordinal);
    }

    private static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
}
