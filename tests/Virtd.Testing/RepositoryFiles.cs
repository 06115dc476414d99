namespace Virtd.Testing;

/// <summary>Files of the repository the tests were built from, found in the first folder above the test assembly that has them.</summary>
public static class RepositoryFiles
{
    /// <summary>The committed OpenAPI document, which the build writes and scripts/test checks is current.</summary>
    public static string OpenApiDocument => Find(Path.Combine("openapi", "virtd.v1.json"));

    public static string Find(string relativePath)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relativePath);
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"{relativePath} not found above {AppContext.BaseDirectory}");
    }
}
