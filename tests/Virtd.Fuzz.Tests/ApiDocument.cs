using System.Text.Json.Nodes;

namespace Virtd.Fuzz.Tests;

/// <summary>One operation of the OpenAPI document: what the fuzzer may send, and what the daemon may answer.</summary>
public sealed record ApiOperation(string Method, string Template, string[] Segments, IReadOnlyList<ApiParameter> Parameters,
    JsonObject? BodySchema, IReadOnlySet<int> Statuses)
{
    public override string ToString() => $"{Method} {Template}";

    /// <summary>Whether <paramref name="path"/> (decoded segments) fits this operation's template.</summary>
    public bool Matches(IReadOnlyList<string> path)
    {
        if (path.Count != Segments.Length) return false;
        for (var i = 0; i < Segments.Length; i++)
            if (!Segments[i].StartsWith('{') && !string.Equals(Segments[i], path[i], StringComparison.OrdinalIgnoreCase)) return false;
        return true;
    }
}

public sealed record ApiParameter(string Name, string In, JsonObject Schema);

/// <summary>The committed OpenAPI document (<c>openapi/virtd.v1.json</c>, which the build checks is current).</summary>
public sealed class ApiDocument
{
    public ApiDocument(JsonObject doc)
    {
        Root = doc;
        var ops = new List<ApiOperation>();
        foreach (var (template, item) in doc["paths"]!.AsObject())
        {
            foreach (var (method, op) in item!.AsObject())
            {
                var parameters = (op!["parameters"]?.AsArray() ?? [])
                    .Select(p => new ApiParameter(p!["name"]!.GetValue<string>(), p["in"]!.GetValue<string>(), Resolve(p["schema"]?.AsObject() ?? [])))
                    .ToList();
                var body = op["requestBody"]?["content"]?["application/json"]?["schema"]?.AsObject();
                var statuses = op["responses"]!.AsObject().Select(r => int.Parse(r.Key)).ToHashSet();
                ops.Add(new ApiOperation(method.ToUpperInvariant(), template, template.Trim('/').Split('/'), parameters,
                    body is null ? null : Resolve(body), statuses));
            }
        }
        Operations = ops;
        var code = Schema("ProblemDetails")["properties"]!["code"]!["enum"]!.AsArray();
        Codes = code.Select(c => c!.GetValue<string>()).ToHashSet();
    }

    public JsonObject Root { get; }

    public IReadOnlyList<ApiOperation> Operations { get; }

    /// <summary>The problem codes the document lists.</summary>
    public IReadOnlySet<string> Codes { get; }

    public JsonObject Schema(string name) => Root["components"]!["schemas"]![name]!.AsObject();

    /// <summary>A <c>$ref</c> followed, else the schema itself.</summary>
    public JsonObject Resolve(JsonObject schema) =>
        schema["$ref"]?.GetValue<string>() is { } r ? Schema(r[(r.LastIndexOf('/') + 1)..]) : schema;

    /// <summary>The operations whose template fits the path, whatever their method.</summary>
    public List<ApiOperation> ForPath(IReadOnlyList<string> segments) => Operations.Where(o => o.Matches(segments)).ToList();

    public static ApiDocument Load()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var file = Path.Combine(dir.FullName, "openapi", "virtd.v1.json");
            if (File.Exists(file)) return new ApiDocument(JsonNode.Parse(File.ReadAllText(file))!.AsObject());
        }
        throw new FileNotFoundException("openapi/virtd.v1.json not found above the test assembly");
    }
}
