using System.Text.Json.Nodes;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Virtd.Api.Storage;

/// <summary>
/// A size (<c>capacity</c>) is read from a raw JSON value (<see cref="System.Text.Json.JsonElement"/>), which ASP.NET
/// Core documents as "anything": the document says what is taken instead, a whole number of bytes or a string with a
/// binary unit (<see cref="Core.Storage.Capacity"/>).
/// </summary>
internal sealed class CapacityOpenApi : IOpenApiDocumentTransformer
{
    public Task TransformAsync(OpenApiDocument document, OpenApiDocumentTransformerContext context, CancellationToken cancellationToken)
    {
        if (document.Components?.Schemas is not { } schemas || !schemas.TryGetValue("JsonElement", out var s) || s is not OpenApiSchema schema)
            return Task.CompletedTask;
        schema.Description = "A size in bytes: a whole number, or a string of digits with an optional unit B, KiB, MiB, GiB, TiB (also K, M, G, T; all 1024-based), at most 64 TiB.";
        schema.OneOf =
        [
            new OpenApiSchema { Type = JsonSchemaType.Integer, Format = "int64", Minimum = "0", Maximum = Core.Storage.Capacity.Max.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            new OpenApiSchema { Type = JsonSchemaType.String, Pattern = "^\\s*[0-9]{1,19}\\s*(B|KiB|MiB|GiB|TiB|K|M|G|T)?\\s*$" },
        ];
        schema.Examples = [JsonValue.Create("10GiB")];
        return Task.CompletedTask;
    }
}
