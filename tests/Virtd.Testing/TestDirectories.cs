using System.Collections.Concurrent;

namespace Virtd.Testing;

/// <summary>
/// Temporary directories the tests create, removed when the test process exits: not when an app is
/// disposed, because a restart test opens a second daemon on the first one's state directory.
/// </summary>
public static class TestDirectories
{
    private static readonly ConcurrentBag<string> Created = [];

    static TestDirectories() => AppDomain.CurrentDomain.ProcessExit += (_, _) => DeleteAll();

    public static string Create(string prefix)
    {
        var path = Directory.CreateTempSubdirectory(prefix).FullName;
        Created.Add(path);
        return path;
    }

    private static void DeleteAll()
    {
        foreach (var path in Created)
        {
            try { Directory.Delete(path, recursive: true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }
}
