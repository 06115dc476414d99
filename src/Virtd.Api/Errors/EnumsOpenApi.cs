using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Virtd.Api.Errors;

/// <summary>
/// Enum schemas as they are sent: every enum travels as a kebab-case string (<see cref="Virtd.Core.VirtdJson"/>), but
/// ASP.NET Core writes the component as a bare <c>enum</c> without <c>type</c>, and puts <c>null</c> among its values
/// when it meets the enum first as a nullable property, although every nullable use already says so at the use site
/// (<c>oneOf: [{type: null}, {$ref}]</c>). A client generator then takes the enum for integers (NSwag) or makes a class
/// of it; with <c>type: string</c> and only the strings it generates a string enum with the wire's spellings.
/// </summary>
internal sealed class EnumsOpenApi : IOpenApiDocumentTransformer
{
    public Task TransformAsync(OpenApiDocument document, OpenApiDocumentTransformerContext context, CancellationToken cancellationToken)
    {
        foreach (var schema in document.Components?.Schemas?.Values.OfType<OpenApiSchema>() ?? [])
        {
            if (schema.Type is not null || schema.Enum is not { Count: > 0 } values) continue;
            var strings = values.Where(v => v is not null).ToList();
            if (strings.Count == 0 || !strings.All(v => v!.GetValueKind() == System.Text.Json.JsonValueKind.String)) continue;
            schema.Type = JsonSchemaType.String;
            schema.Enum = strings!;
        }
        return Task.CompletedTask;
    }
}
