using System.Text.Json.Nodes;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;
using Virtd.Core.Errors;

namespace Virtd.Api.Errors;

/// <summary>
/// Problems in the OpenAPI document as they are sent: every problem body carries <c>code</c> (one of
/// <see cref="ErrorCodes.All"/>), <c>traceId</c> and, for validation, <c>errors</c>; every operation that takes a
/// body also answers 400 (malformed or invalid), 413 and 415, whatever its own list says.
/// </summary>
internal sealed class ProblemsOpenApi : IOpenApiDocumentTransformer, IOpenApiOperationTransformer
{
    public Task TransformAsync(OpenApiDocument document, OpenApiDocumentTransformerContext context, CancellationToken cancellationToken)
    {
        if (document.Components?.Schemas is not { } schemas) return Task.CompletedTask;
        foreach (var name in new[] { "ProblemDetails", "HttpValidationProblemDetails" })
        {
            if (!schemas.TryGetValue(name, out var s) || s is not OpenApiSchema schema) continue;
            schema.Properties ??= new Dictionary<string, IOpenApiSchema>();
            schema.Properties["code"] = new OpenApiSchema
            {
                Type = JsonSchemaType.String,
                Description = "Stable error code (README: error codes); clients branch on this, not on title or detail.",
                Enum = [.. ErrorCodes.All.Select(c => (JsonNode)JsonValue.Create(c)!)],
            };
            schema.Properties["traceId"] = new OpenApiSchema { Type = JsonSchemaType.String, Description = "The request's trace id, as logged." };
            schema.Properties["errors"] = new OpenApiSchema
            {
                Type = JsonSchemaType.Object | JsonSchemaType.Null,
                Description = "validation-failed: messages keyed by the camelCase JSON path (or query parameter) they are about.",
                AdditionalProperties = new OpenApiSchema { Type = JsonSchemaType.Array, Items = new OpenApiSchema { Type = JsonSchemaType.String } },
            };
            schema.Required ??= new HashSet<string>();
            schema.Required.Add("code");
            schema.AdditionalPropertiesAllowed = true;
            schema.AdditionalProperties = null;
        }
        return Task.CompletedTask;
    }

    public Task TransformAsync(OpenApiOperation operation, OpenApiOperationTransformerContext context, CancellationToken cancellationToken)
    {
        if (operation.RequestBody is null) return Task.CompletedTask;
        operation.Responses ??= new OpenApiResponses();
        foreach (var (status, description) in new[] { ("400", "Bad Request"), ("413", "Content Too Large"), ("415", "Unsupported Media Type") })
        {
            if (operation.Responses.ContainsKey(status)) continue;
            operation.Responses[status] = new OpenApiResponse
            {
                Description = description,
                Content = new Dictionary<string, OpenApiMediaType>
                {
                    [ProblemResponses.ContentType] = new() { Schema = new OpenApiSchemaReference("ProblemDetails", context.Document) },
                },
            };
        }
        return Task.CompletedTask;
    }
}
