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

    /// <summary>
    /// Runs the repository's script <paramref name="relativePath"/> (scripts/build-test-guest, scripts/publish) and returns
    /// the value of its last <c>key=</c> line; throws with the script's output when it fails, runs past
    /// <paramref name="timeout"/> or prints no such line.
    /// </summary>
    public static Func<string, string> RunScript(string relativePath, TimeSpan timeout)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Find(relativePath))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout)) throw new TimeoutException($"{relativePath} took over {timeout}");
        if (p.ExitCode != 0) throw new InvalidOperationException($"{relativePath} failed ({p.ExitCode}): {stderr.Result}{stdout.Result}");
        var lines = stdout.Result.Split('\n').Select(l => l.Trim()).ToList();
        return key => lines.LastOrDefault(l => l.StartsWith(key + "=", StringComparison.Ordinal))?[(key.Length + 1)..]
            ?? throw new InvalidOperationException($"{relativePath} printed no '{key}=' line: {stdout.Result}");
    }
}
