using System.ComponentModel;
using System.Reflection;
using Virtd.Core.Domains;

namespace Virtd.Core.Tests.Domains;

public sealed class DefaultValuesTests
{
    /// <summary>Every public property of Core's types that states its default with <see cref="DefaultValueAttribute"/>, by type.</summary>
    private static IEnumerable<(Type Type, List<(PropertyInfo Property, object? Default)> Properties)> Defaulted() =>
        typeof(DomainDefinition).Assembly.GetExportedTypes().Where(t => t is { IsClass: true, IsAbstract: false })
            .Select(t => (t, t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                .Select(p => (Property: p, Attribute: p.GetCustomAttribute<DefaultValueAttribute>()))
                .Where(p => p.Attribute is not null).Select(p => (p.Property, p.Attribute!.Value)).ToList()))
            .Where(t => t.Item2.Count > 0);

    /// <summary>
    /// A <see cref="DefaultValueAttribute"/> is what the OpenAPI document gives clients as the default: it must be the
    /// value a new instance has, which is what the daemon takes when the property is absent.
    /// </summary>
    [Fact]
    public void DefaultValueAttributes_AreTheInitializersValues()
    {
        var checkedProperties = 0;
        foreach (var (type, properties) in Defaulted())
        {
            var instance = Activator.CreateInstance(type)!;
            foreach (var (property, value) in properties)
            {
                Assert.True(Equals(value, property.GetValue(instance)),
                    $"{type.Name}.{property.Name}: [DefaultValue({value})] but a new instance has {property.GetValue(instance)}");
                checkedProperties++;
            }
        }
        Assert.True(checkedProperties >= 7, $"only {checkedProperties} properties have [DefaultValue]");
    }

    /// <summary>
    /// A body that leaves a property out gets its default: the source-generated JSON metadata must not reset it to 0
    /// (it would for an init-only property, which it fills in one object initializer).
    /// </summary>
    [Fact]
    public void AnAbsentProperty_IsReadAsItsDefault()
    {
        var checkedProperties = 0;
        foreach (var (type, properties) in Defaulted())
        {
            var read = System.Text.Json.JsonSerializer.Deserialize("{}", VirtdJson.Options.GetTypeInfo(type))!;
            foreach (var (property, value) in properties)
            {
                Assert.True(Equals(value, property.GetValue(read)),
                    $"{type.Name}.{property.Name}: [DefaultValue({value})] but {{}} reads as {property.GetValue(read)}");
                checkedProperties++;
            }
        }
        Assert.True(checkedProperties >= 7, $"only {checkedProperties} properties have [DefaultValue]");
    }
}
