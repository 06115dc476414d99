using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
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

    // Top-level fields of a newer version, read from each domain's file: written back with it.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, JsonObject> _unknown = new(StringComparer.Ordinal);

    /// <summary>Writes the definition atomically; on a full disk 507 <c>insufficient-storage</c> and the old file stands.</summary>
    public void Save(DomainDefinition definition)
    {
        System.IO.Directory.CreateDirectory(Directory);
        byte[] bytes;
        if (_unknown.TryGetValue(definition.Name, out var kept))
        {
            var node = JsonSerializer.SerializeToNode(definition, VirtdJson.Definition)!.AsObject();
            foreach (var (name, value) in kept) node.TryAdd(name, value?.DeepClone());
            bytes = JsonSerializer.SerializeToUtf8Bytes(node, VirtdJson.Info<JsonObject>(VirtdJson.Indented));
        }
        else
        {
            bytes = JsonSerializer.SerializeToUtf8Bytes(definition, VirtdJson.Info<DomainDefinition>(VirtdJson.Indented));
        }
        try { AtomicFile.Write(PathOf(definition.Name), bytes, mode: AtomicFile.OwnerOnly); }
        catch (DirectorySyncException e)
        {
            log.LogError("definition of {Domain} saved, but: {Error}", definition.Name, e.Message);
        }
        catch (IOException e) when (Errors.VirtdException.IsDiskFull(e))
        {
            throw Errors.VirtdException.InsufficientStorage($"the definition of '{definition.Name}' could not be saved");
        }
    }

    public void Delete(string name)
    {
        _unknown.TryRemove(name, out _);
        try { AtomicFile.Delete(PathOf(name)); }
        catch (DirectorySyncException e) { log.LogError("definition of {Domain} removed, but: {Error}", name, e.Message); }
    }

    /// <summary>
    /// Reads every definition. Fields this version does not know are logged; those at the top level are kept and
    /// written back at the next save, nested ones are dropped then. A list written as <c>null</c> is read as empty.
    /// A file that is not a usable definition (no JSON, no name, a duplicate, or one <paramref name="problem"/>
    /// refuses) is set aside as <c>*.corrupt</c> and reported with its reason.
    /// </summary>
    public (List<DomainDefinition> Loaded, List<Quarantined> SetAside) Load(Func<DomainDefinition, string?>? problem = null)
    {
        System.IO.Directory.CreateDirectory(Directory);
        var loaded = new List<DomainDefinition>();
        var setAside = new List<Quarantined>();
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
            string? reason;
            DomainDefinition? def = null;
            try
            {
                def = Read(file, out var kept);
                reason = def switch
                {
                    null => "the file holds null",
                    { Uuid: null } => "the definition has no uuid",
                    { Name: null or "" } => "the definition has no name",
                    _ when !DomainDefinitionValidator.NameRegex.IsMatch(def.Name) => $"invalid name '{def.Name}'",
                    _ when Path.GetFileNameWithoutExtension(file) != def.Name => $"the file name does not match the domain name '{def.Name}'",
                    _ when !names.Add(def.Name) => $"duplicate name '{def.Name}'",
                    _ when !uuids.Add(def.Uuid!.Value) => $"duplicate uuid {def.Uuid}",
                    _ => problem?.Invoke(def),
                };
                if (reason is null && kept is not null) _unknown[def!.Name!] = kept;
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException or InvalidOperationException)
            {
                reason = e.Message;
            }
            if (reason is null)
            {
                loaded.Add(def!);
                continue;
            }
            var aside = SetAside(file);
            setAside.Add(new Quarantined(Path.GetFileName(aside), reason));
            log.LogError("definition file {File} is unusable ({Problem}); moved aside to {Aside}", file, reason, aside);
        }
        Quarantine = setAside;
        return (loaded, setAside);
    }

    /// <summary>The files set aside at the last load, with why.</summary>
    public IReadOnlyList<Quarantined> Quarantine { get; private set; } = [];

    /// <summary>
    /// Parses a definition, taking out (and logging) the fields this version does not know; returns the unknown
    /// top-level ones to keep.
    /// </summary>
    private DomainDefinition? Read(string file, out JsonObject? kept)
    {
        kept = null;
        var node = JsonNode.Parse(File.ReadAllBytes(file), documentOptions: new JsonDocumentOptions { MaxDepth = 64 });
        if (node is not JsonObject root) return node is null ? null : throw new JsonException("the file does not hold a JSON object");
        foreach (var list in new[] { "disks", "nics" })
        {
            if (root.TryGetPropertyValue(list, out var value) && value is null)
            {
                root[list] = new JsonArray();
                log.LogWarning("definition file {File}: '{List}' is null; read as an empty list", file, list);
            }
        }
        var unknown = new List<string>();
        kept = TakeUnknown(root, typeof(DomainDefinition), "", unknown, keep: true);
        if (unknown.Count > 0)
            log.LogWarning("definition file {File} has fields this version does not know: {Fields} (top-level ones are kept, nested ones dropped at the next save)",
                file, string.Join(", ", unknown));
        return root.Deserialize(VirtdJson.Definition);
    }

    /// <summary>Removes the members of <paramref name="obj"/> that <paramref name="type"/> has no property for, recursing into known objects and lists.</summary>
    private static JsonObject? TakeUnknown(JsonObject obj, Type type, string path, List<string> unknown, bool keep)
    {
        var info = VirtdJson.Options.GetTypeInfo(type);
        var known = info.Properties.ToDictionary(p => p.Name, p => p.PropertyType, StringComparer.Ordinal);
        JsonObject? taken = null;
        foreach (var (name, value) in obj.ToList())
        {
            if (!known.TryGetValue(name, out var propertyType))
            {
                unknown.Add(path + name);
                obj.Remove(name);
                if (keep) (taken ??= [])[name] = value?.DeepClone();
                continue;
            }
            var property = VirtdJson.Options.GetTypeInfo(propertyType);
            if (value is JsonObject child && property.Kind == JsonTypeInfoKind.Object)
                TakeUnknown(child, propertyType, $"{path}{name}.", unknown, keep: false);
            else if (value is JsonArray items && property is { Kind: JsonTypeInfoKind.Enumerable, ElementType: { } element }
                     && VirtdJson.Options.GetTypeInfo(element).Kind == JsonTypeInfoKind.Object)
            {
                for (var i = 0; i < items.Count; i++)
                    if (items[i] is JsonObject item) TakeUnknown(item, element, $"{path}{name}[{i}].", unknown, keep: false);
            }
        }
        return taken;
    }

    /// <summary>Moves an unusable file aside; a failure to do so is logged, never fatal (the file is then left where it is and skipped).</summary>
    private string SetAside(string file)
    {
        var target = file + CorruptSuffix;
        try
        {
            for (var i = 1; File.Exists(target); i++) target = $"{file}{CorruptSuffix}.{i}";
            File.Move(file, target);
            AtomicFile.SyncDirectory(Path.GetDirectoryName(file)!);
            return target;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogError("cannot move {File} aside ({Error}); it is skipped where it is", file, e.Message);
            return file;
        }
    }
}

/// <summary>A definition file set aside at start (<c>GET /api/v1/host</c> lists them): the name it has now and why.</summary>
public sealed record Quarantined(string File, string Reason);
