using System.Text.Json;
using Microsoft.Extensions.Logging;
using Virtd.Core.Domains;

namespace Virtd.Core.Persistence;

/// <summary>
/// One JSON file per persistent definition in <c>&lt;StateDirectory&gt;/domains</c>, written atomically.
/// At load, a file that cannot be read as a definition is moved aside as <c>*.corrupt</c> and the rest load.
/// </summary>
public sealed class DomainStore(string directory, ILogger<DomainStore> log)
{
    public const string CorruptSuffix = ".corrupt";

    public string Directory { get; } = directory;

    public string PathOf(string name) => Path.Combine(Directory, name + ".json");

    public void Save(DomainDefinition definition)
    {
        System.IO.Directory.CreateDirectory(Directory);
        var bytes = JsonSerializer.SerializeToUtf8Bytes(definition, VirtdJson.Indented);
        AtomicFile.Write(PathOf(definition.Name), bytes, mode: AtomicFile.OwnerOnly);
    }

    public void Delete(string name) => AtomicFile.Delete(PathOf(name));

    /// <summary>Reads every definition; sets aside what cannot be used, with the reason logged.</summary>
    public (List<DomainDefinition> Loaded, List<string> SetAside) Load()
    {
        System.IO.Directory.CreateDirectory(Directory);
        var loaded = new List<DomainDefinition>();
        var setAside = new List<string>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var uuids = new HashSet<Guid>();
        // Temporary files of saves that a crash interrupted: the rename never happened, so the old file stands.
        foreach (var tmp in System.IO.Directory.EnumerateFiles(Directory, ".*.tmp"))
        {
            try { File.Delete(tmp); }
            catch (IOException e) { log.LogWarning("cannot remove leftover {File}: {Error}", tmp, e.Message); }
        }
        foreach (var file in System.IO.Directory.EnumerateFiles(Directory, "*.json").Order(StringComparer.Ordinal))
        {
            string? problem;
            DomainDefinition? def = null;
            try
            {
                def = JsonSerializer.Deserialize<DomainDefinition>(File.ReadAllBytes(file), VirtdJson.Options);
                problem = def switch
                {
                    null => "the file holds null",
                    { Uuid: null } => "the definition has no uuid",
                    { Name: null } => "the definition has no name",
                    _ when !DomainDefinitionValidator.NameRegex.IsMatch(def.Name) => $"invalid name '{def.Name}'",
                    _ when Path.GetFileNameWithoutExtension(file) != def.Name => $"the file name does not match the domain name '{def.Name}'",
                    _ when !names.Add(def.Name) => $"duplicate name '{def.Name}'",
                    _ when !uuids.Add(def.Uuid!.Value) => $"duplicate uuid {def.Uuid}",
                    _ => null,
                };
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException)
            {
                problem = e.Message;
            }
            if (problem is null)
            {
                loaded.Add(def!);
                continue;
            }
            var aside = SetAside(file);
            setAside.Add(aside);
            log.LogError("definition file {File} is unusable ({Problem}); moved aside to {Aside}", file, problem, aside);
        }
        return (loaded, setAside);
    }

    private static string SetAside(string file)
    {
        var target = file + CorruptSuffix;
        for (var i = 1; File.Exists(target); i++) target = $"{file}{CorruptSuffix}.{i}";
        File.Move(file, target);
        AtomicFile.SyncDirectory(Path.GetDirectoryName(file)!);
        return target;
    }
}
