using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Domains;
using Virtd.Api.Jobs;
using Virtd.Core.Domains;
using Virtd.Core.Errors;

namespace Virtd.Api.Access;

/// <summary>Body of <c>POST /api/v1/tokens</c>.</summary>
public sealed record CreateTokenRequest
{
    /// <summary>Unique name; what the audit log calls whoever uses the token. Same form as a domain name.</summary>
    public string? Name { get; init; }
    /// <summary><c>reader</c>, <c>operator</c> or <c>admin</c>.</summary>
    public Role? Role { get; init; }
    /// <summary>When the token stops working; null (the default) never.</summary>
    public DateTimeOffset? ExpiresAt { get; init; }
}

/// <summary>A token as listed: never its secret.</summary>
public sealed record TokenDto(string Name, Role Role, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt, DateTimeOffset? LastUsedAt, bool Expired)
{
    public static TokenDto From(TokenEntry t, DateTimeOffset now) => new(t.Name, t.Role, t.CreatedAt, t.ExpiresAt, t.LastUsedAt, t.ExpiredAt(now));
}

/// <summary>A new token with its secret: the only time the secret is shown.</summary>
public sealed record CreatedTokenDto(string Name, Role Role, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt, string Secret);

public sealed record TokenListDto(int Count, IReadOnlyList<TokenDto> Items);

public static class TokensApi
{
    public static IEndpointRouteBuilder MapTokensApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/tokens").WithTags("Access");
        g.MapGet("", ListTokens).WithName("ListTokens").WithSummary("API tokens: name, role, creation, last use, expiry; never a secret")
            .Requires(Role.Admin);
        g.MapPost("", CreateToken).WithName("CreateToken")
            .WithSummary("Create an API token; the answer holds its secret, shown this once and stored nowhere (only its hash)")
            .Requires(Role.Admin).Idempotent().Audited(201).Problems(400, 409, 413, 415, 503, 507);
        g.MapGet("/{name}", GetToken).WithName("GetToken").WithSummary("One API token, without its secret")
            .Requires(Role.Admin).Problems(404);
        g.MapDelete("/{name}", RevokeToken).WithName("RevokeToken")
            .WithSummary("Revoke a token and end its sessions: its very next request gets 401")
            .Requires(Role.Admin).Audited(204).Problems(404, 503, 507);
        return app;
    }

    public static Ok<TokenListDto> ListTokens(TokenStore tokens, TimeProvider time)
    {
        var now = time.GetUtcNow();
        var items = tokens.List().Select(t => TokenDto.From(t, now)).ToList();
        return TypedResults.Ok(new TokenListDto(items.Count, items));
    }

    public static Ok<TokenDto> GetToken(string name, TokenStore tokens, TimeProvider time) =>
        TypedResults.Ok(TokenDto.From(tokens.Find(name) ?? throw AccessErrors.TokenNotFound(name), time.GetUtcNow()));

    public static Created<CreatedTokenDto> CreateToken(CreateTokenRequest request, HttpContext http, TokenStore tokens, TimeProvider time)
    {
        var errors = new Dictionary<string, string[]>();
        if (string.IsNullOrEmpty(request.Name)) errors["name"] = ["is required"];
        else if (!DomainDefinitionValidator.IsNameForm(request.Name)) errors["name"] = [$"must match {DomainDefinitionValidator.NamePattern}"];
        if (request.Role is not { } role || !Enum.IsDefined(role)) errors["role"] = ["is required: reader, operator or admin"];
        if (request.ExpiresAt is { } e && e <= time.GetUtcNow()) errors["expiresAt"] = ["must be in the future (or null: never)"];
        if (errors.Count > 0) throw VirtdException.Validation(errors);
        if (tokens.Find(request.Name!) is not null) throw AccessErrors.TokenExists(request.Name!);

        Audit.Of(http).Write();
        var (token, secret) = tokens.Create(request.Name!, request.Role!.Value, request.ExpiresAt?.ToUniversalTime());
        return TypedResults.Created($"/api/v1/tokens/{Uri.EscapeDataString(token.Name)}",
            new CreatedTokenDto(token.Name, token.Role, token.CreatedAt, token.ExpiresAt, secret));
    }

    public static NoContent RevokeToken(string name, HttpContext http, TokenStore tokens)
    {
        if (tokens.Find(name) is null) throw AccessErrors.TokenNotFound(name);
        Audit.Of(http).Write();
        if (!tokens.Revoke(name)) throw AccessErrors.TokenNotFound(name);
        return TypedResults.NoContent();
    }
}
