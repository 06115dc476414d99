using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Virtd.Api.Errors;

/// <summary>
/// What a 201 or 202 says besides its body, in the OpenAPI document: the <c>Location</c> of what was made, or of the
/// job that was queued; and, on an action, which of its two successes is which: 202 while the job is unfinished,
/// 200 once it has finished within <c>?wait=N</c>. ASP.NET Core documents neither (both are "Accepted" and "OK").
/// </summary>
internal sealed class LocationOpenApi : IOpenApiOperationTransformer
{
    public Task TransformAsync(OpenApiOperation operation, OpenApiOperationTransformerContext context, CancellationToken cancellationToken)
    {
        if (operation.Responses is not { } responses) return Task.CompletedTask;
        if (responses.TryGetValue("201", out var created) && created is OpenApiResponse c)
            AddLocation(c, "The URL of what was made.");
        if (responses.TryGetValue("202", out var accepted) && accepted is OpenApiResponse a)
        {
            AddLocation(a, "The job's URL: GET it (with ?wait=N to wait up to N s for it to finish).");
            if (responses.TryGetValue("200", out var ok) && ok is OpenApiResponse o)
            {
                a.Description = "Accepted: the job, queued or running (no ?wait=, or it did not finish within N s).";
                o.Description = "OK: the job, finished (succeeded, failed, cancelled, ...) within ?wait=N s.";
            }
            else
            {
                a.Description = "Accepted: the job.";
            }
        }
        return Task.CompletedTask;
    }

    private static void AddLocation(OpenApiResponse response, string description)
    {
        response.Headers ??= new Dictionary<string, IOpenApiHeader>();
        response.Headers["Location"] = new OpenApiHeader
        {
            Description = description,
            Required = true,
            Schema = new OpenApiSchema { Type = JsonSchemaType.String, Format = "uri-reference" },
        };
    }
}
