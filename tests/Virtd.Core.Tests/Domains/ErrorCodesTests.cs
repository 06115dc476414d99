using System.Reflection;
using Virtd.Core.Errors;

namespace Virtd.Core.Tests.Domains;

public sealed class ErrorCodesTests
{
    /// <summary>The OpenAPI document lists <see cref="ErrorCodes.All"/>: a code added without it would be undocumented.</summary>
    [Fact]
    public void All_ListsEveryCode_Once()
    {
        var constants = typeof(ErrorCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral).Select(f => (string)f.GetRawConstantValue()!).Order().ToList();

        Assert.Equal(constants, ErrorCodes.All.Order().ToList());
        Assert.Equal(ErrorCodes.All.Count, ErrorCodes.All.Distinct().Count());
    }
}
