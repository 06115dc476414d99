using System.Reflection;
using System.Text.Json;
using Virtd.Core.Errors;
using Virtd.Testing;

namespace Virtd.Core.Tests.Domains;

public sealed class ErrorCodesTests
{
    /// <summary>The OpenAPI document lists <see cref="ErrorCodes.All"/>: a code added without it would be undocumented.</summary>
    [Fact]
    public void All_ListsEveryCode_Once()
    {
        Assert.Equal(Constants(), ErrorCodes.All.Order(StringComparer.Ordinal).ToList());
        Assert.Equal(ErrorCodes.All.Count, ErrorCodes.All.Distinct().Count());
    }

    /// <summary>
    /// The committed OpenAPI document (which scripts/test checks is what the build writes, and lints) lists every code
    /// the server can send as the problem schemas' <c>code</c> enum, and no other: a client generated from it knows them all.
    /// </summary>
    [Fact]
    public void OpenApiDocument_ListsEveryCode_AsTheProblemsCodeEnum()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(RepositoryFiles.OpenApiDocument));
        var schemas = document.RootElement.GetProperty("components").GetProperty("schemas");
        foreach (var name in new[] { "ProblemDetails", "HttpValidationProblemDetails" })
        {
            var code = schemas.GetProperty(name).GetProperty("properties").GetProperty("code");
            var listed = code.GetProperty("enum").EnumerateArray().Select(e => e.GetString()!).ToList();
            Assert.Equal(ErrorCodes.All, listed);
            Assert.Equal(Constants(), listed.Order(StringComparer.Ordinal).ToList());
            Assert.Contains("code", schemas.GetProperty(name).GetProperty("required").EnumerateArray().Select(e => e.GetString()));
        }
    }

    private static List<string> Constants() =>
        typeof(ErrorCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral).Select(f => (string)f.GetRawConstantValue()!).Order(StringComparer.Ordinal).ToList();
}
