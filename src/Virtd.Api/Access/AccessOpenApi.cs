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
        var metadata = context.Description.ActionDescriptor.EndpointMetadata;
        if (metadata.OfType<Microsoft.AspNetCore.Authorization.IAllowAnonymous>().Any())
        {
            // As AccessPolicies.Needed reads it: anonymous wins over a role.
            operation.Description = Describe(operation.Description, "Anonymous: needs no token or session.");
            return Task.CompletedTask;
        }
        if (metadata.OfType<RequiredRole>().LastOrDefault() is not { } required)
            return Task.CompletedTask;
        var role = RoleText.Of(required.Role);
        operation.Security =
        [
            new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference(Bearer, context.Document)] = [role] },
            new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference(Session, context.Document)] = [role] },
        ];
        operation.Extensions ??= new Dictionary<string, IOpenApiExtension>();
        operation.Extensions["x-virtd-role"] = new JsonNodeExtension(JsonValue.Create(role));
        operation.Description = Describe(operation.Description, $"Needs the **{role}** role.");
        return Task.CompletedTask;
    }

    /// <summary>The operation's own description, then what access it needs.</summary>
    private static string Describe(string? description, string access) =>
        (description is { Length: > 0 } d ? d + "\n\n" : "") + access;
}
