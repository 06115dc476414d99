using System.Collections;
using System.Reflection;
using System.Text;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>
/// The Native AOT binary's start-up. Dependency injection closes open generic registrations at run time (<c>ILogger&lt;T&gt;</c>,
/// <c>IOptions&lt;T&gt;</c>, <c>OptionsFactory&lt;T&gt;</c>, arrays for <c>IEnumerable&lt;T&gt;</c>, ...). A type the AOT compiler
/// did not make is built by its type loader from a template, which took a third of start-up's CPU; src/Virtd.Api/virtd.rd.xml
/// names those types so that the compiler makes them (a restart went from 92–102 to 69–84 ms). This test finds the types
/// the daemon's container makes and fails on any the file misses, so that a new service does not slow start-up unseen.
/// <c>VIRTD_WRITE_AOT_TYPES=1</c> rewrites the file from what it finds.
/// </summary>
public sealed class AotTypeDirectivesTests
{
    private static string DirectivesFile => RepositoryFiles.Find(Path.Combine("src", "Virtd.Api", "virtd.rd.xml"));

    [Fact]
    public async Task TheDirectives_NameEveryClosedGenericTypeTheContainerMakes()
    {
        await using var app = new VirtdApplication(kestrel: true);
        using var http = app.CreateClient();
        (await http.GetAsync("/readyz")).EnsureSuccessStatusCode();
        (await http.GetAsync("/api/v1/domains")).EnsureSuccessStatusCode();

        var made = ClosedGenericsOf(app.Services).Where(t => !FromTests(t)).Select(t => (Assembly: DefiningAssembly(t), Name: NameOf(t)))
            .ToHashSet();
        if (Environment.GetEnvironmentVariable("VIRTD_WRITE_AOT_TYPES") == "1") await File.WriteAllTextAsync(DirectivesFile, Directives(made));

        var listed = File.ReadAllText(DirectivesFile);
        var missing = made.Where(t => !listed.Contains($"<Type Name=\"{System.Security.SecurityElement.Escape(t.Name)}\"", StringComparison.Ordinal))
            .Select(t => t.Name).Order().ToList();
        Assert.True(missing.Count == 0,
            $"src/Virtd.Api/virtd.rd.xml misses {missing.Count} types the container makes (run this test with VIRTD_WRITE_AOT_TYPES=1 to rewrite it):\n" +
            string.Join("\n", missing.Take(20)));
    }

    /// <summary>Every closed generic type (and array) the provider's call sites name: services, implementations, IEnumerable items.</summary>
    private static HashSet<Type> ClosedGenericsOf(IServiceProvider services)
    {
        // Microsoft.Extensions.DependencyInjection keeps its call sites in CallSiteFactory._callSiteCache (internal; read only here).
        var factory = services.GetType().GetProperty("CallSiteFactory", BindingFlags.NonPublic | BindingFlags.Instance)?.GetValue(services)
            ?? throw new InvalidOperationException($"{services.GetType()} has no CallSiteFactory: the container's internals changed");
        var cache = factory.GetType().GetField("_callSiteCache", BindingFlags.NonPublic | BindingFlags.Instance)?.GetValue(factory) as IDictionary
            ?? throw new InvalidOperationException("CallSiteFactory has no _callSiteCache: the container's internals changed");
        var types = new HashSet<Type>();
        void Add(Type? t)
        {
            if (t is null || t.ContainsGenericParameters) return;
            if (t.IsArray)
            {
                types.Add(t);
                Add(t.GetElementType());
            }
            else if (t.IsGenericType)
            {
                types.Add(t);
                foreach (var a in t.GetGenericArguments()) Add(a);
            }
        }
        foreach (DictionaryEntry entry in cache)
        {
            var site = entry.Value!;
            var type = site.GetType();
            Add(type.GetProperty("ServiceType")?.GetValue(site) as Type);
            Add(type.GetProperty("ImplementationType")?.GetValue(site) as Type);
            if (type.GetProperty("ItemType")?.GetValue(site) is Type item) Add(item.MakeArrayType());
        }
        return types;
    }

    private static bool FromTests(Type t) =>
        t.IsArray ? FromTests(t.GetElementType()!)
        : IsTestAssembly(t.Assembly) || (t.IsGenericType && t.GetGenericArguments().Any(FromTests));

    private static bool IsTestAssembly(Assembly a) =>
        a.GetName().Name is { } n && (n.Contains("Test", StringComparison.Ordinal) || n.StartsWith("xunit", StringComparison.Ordinal));

    private static string DefiningAssembly(Type t) => t.IsArray ? DefiningAssembly(t.GetElementType()!) : t.Assembly.GetName().Name!;

    /// <summary>The name rd.xml takes: <c>Ns.Type`1[[Arg,ArgAssembly]]</c>, arrays with <c>[]</c>.</summary>
    private static string NameOf(Type t)
    {
        if (t.IsArray) return NameOf(t.GetElementType()!) + "[]";
        if (!t.IsGenericType) return t.FullName!;
        return t.GetGenericTypeDefinition().FullName + "[" +
            string.Join(",", t.GetGenericArguments().Select(a => $"[{NameOf(a)},{a.Assembly.GetName().Name}]")) + "]";
    }

    private static string Directives(IEnumerable<(string Assembly, string Name)> types)
    {
        var xml = new StringBuilder();
        xml.AppendLine("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
        xml.AppendLine("<!-- Generic types the daemon's dependency injection closes at run time, made by the AOT compiler instead of at start-up.");
        xml.AppendLine("     Written by tests/Virtd.Api.Tests/AotTypeDirectivesTests.cs (VIRTD_WRITE_AOT_TYPES=1); that test fails when one is missing. -->");
        xml.AppendLine("<Directives xmlns=\"http://schemas.microsoft.com/netfx/2013/01/metadata\">");
        xml.AppendLine("  <Application>");
        foreach (var assembly in types.GroupBy(t => t.Assembly).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            xml.AppendLine($"    <Assembly Name=\"{assembly.Key}\">");
            foreach (var name in assembly.Select(t => t.Name).Order(StringComparer.Ordinal))
                xml.AppendLine($"      <Type Name=\"{System.Security.SecurityElement.Escape(name)}\" Dynamic=\"Required All\" />");
            xml.AppendLine("    </Assembly>");
        }
        xml.AppendLine("  </Application>");
        xml.AppendLine("</Directives>");
        return xml.ToString();
    }
}
