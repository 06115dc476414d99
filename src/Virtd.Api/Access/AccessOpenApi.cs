using System.Text.Json.Nodes;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Virtd.Api.Access;

/// <summary>
/// Access control in the OpenAPI document, from the endpoints' <see cref="RequiredRole"/> metadata: the bearer token
/// and session cookie schemes (Swagger UI's Authorize button takes the token), each operation's role as the scopes of
/// its security requirement (OpenAPI 3.1 allows role names there) and as <c>x-virtd-role</c>, and its 401/403/429.
/// </summary>
internal sealed class AccessOpenApi : IOpenApiDocumentTransformer, IOpenApiOperationTransformer
{
    public const string Bearer = "bearer";
    public const string Session = "session";

    public Task TransformAsync(OpenApiDocument document, OpenApiDocumentTransformerContext context, CancellationToken cancellationToken)
    {
        document.Components ??= new OpenApiComponents();
        document.Components.SecuritySchemes ??= new Dictionary<string, IOpenApiSecurityScheme>();
        document.Components.SecuritySchemes[Bearer] = new OpenApiSecurityScheme
        {
            Type = SecuritySchemeType.Http,
            Scheme = "bearer",
            Description = "An API token: `Authorization: Bearer <secret>`. The first start writes an admin token's secret to " +
                          "<StateDirectory>/initial-admin-token; POST /api/v1/tokens makes more. Roles: reader < operator < admin.",
        };
        document.Components.SecuritySchemes[Session] = new OpenApiSecurityScheme
        {
            Type = SecuritySchemeType.ApiKey,
            In = ParameterLocation.Cookie,
            Name = VirtdAuthentication.SessionCookie,
            Description = "The dashboard's session (POST /api/v1/session). A change made with it must be sent as application/json, " +
                          "and from the daemon's own origin when the browser sends Origin (else 403 csrf-rejected).",
        };
        return Task.CompletedTask;
    }

    public Task TransformAsync(OpenApiOperation operation, OpenApiOperationTransformerContext context, CancellationToken cancellationToken)
    {
        if (context.Description.ActionDescriptor.EndpointMetadata.OfType<RequiredRole>().LastOrDefault() is not { } required)
            return Task.CompletedTask;
        var role = RoleText.Of(required.Role);
        operation.Security =
        [
            new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference(Bearer, context.Document)] = [role] },
            new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference(Session, context.Document)] = [role] },
        ];
        operation.Extensions ??= new Dictionary<string, IOpenApiExtension>();
        operation.Extensions["x-virtd-role"] = new JsonNodeExtension(JsonValue.Create(role));
        operation.Description = (operation.Description is { Length: > 0 } d ? d + "\n\n" : "") + $"Needs the **{role}** role.";
        return Task.CompletedTask;
    }
}
