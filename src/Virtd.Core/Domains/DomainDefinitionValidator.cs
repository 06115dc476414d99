using System.Text.RegularExpressions;
using FluentValidation;

namespace Virtd.Core.Domains;

/// <summary>
/// Rules for a definition (API.md "Domain definition"). Property names in errors are the
/// camelCase JSON paths the user wrote (<c>disks[0].path</c>).
/// </summary>
public sealed class DomainDefinitionValidator : AbstractValidator<DomainDefinition>
{
    public const string NamePattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";
    /// <summary>
    /// <see cref="NamePattern"/> as matched. It ends in <c>\z</c>, not <c>$</c>: .NET's <c>$</c> also
    /// matches before a final newline, which would let "vm\n" through as a name.
    /// </summary>
    internal static readonly Regex NameRegex = new(@"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\z", RegexOptions.CultureInvariant);

    /// <summary>Whether <paramref name="name"/> could be a domain's name (its form only; see also the UUID rule).</summary>
    public static bool IsNameForm(string name) => NameRegex.IsMatch(name);
    public const int MinMemoryMiB = 16;
    public const int MaxMemoryMiB = 1_048_576;
    public const int MaxDescription = 4096;
    public const int MaxDisks = 32;
    public const int MaxNics = 16;
    public const int MaxSimulationDelayMs = 600_000;

    /// <param name="paths">The storage pools files must lie in; null checks a definition's shape only (at load: a pool
    /// that changed since must not make a stored domain disappear; its start checks the paths again).</param>
    /// <summary>The daemon's validator (what dependency injection builds): paths checked against the storage pools, vCPUs against this host.</summary>
    public DomainDefinitionValidator(StoragePaths paths) : this(paths, Environment.ProcessorCount) { }

    public DomainDefinitionValidator(StoragePaths? paths, int hostCpus)
    {
        HostCpus = hostCpus;
        var maxVcpus = MaxVcpus(hostCpus);

        RuleFor(d => d.Name).NotEmpty().WithMessage("is required")
            .Matches(NameRegex).WithMessage($"must match {NamePattern}")
            .Must(n => !Guid.TryParse(n, out _)).WithMessage("must not be a UUID: an id that parses as a UUID addresses a domain by its UUID");
        RuleFor(d => d.Uuid).Must(u => u != Guid.Empty).WithMessage("must not be the nil UUID");
        RuleFor(d => d.Driver).IsDefinedEnum();
        RuleFor(d => d.Vcpus).InclusiveBetween(1, maxVcpus)
            .WithMessage($"must be between 1 and {maxVcpus} (host CPUs × 4, at most 256)");
        RuleFor(d => d.MemoryMiB).InclusiveBetween(MinMemoryMiB, MaxMemoryMiB)
            .WithMessage($"is required and must be between {MinMemoryMiB} and {MaxMemoryMiB}");
        RuleFor(d => d.Machine).IsDefinedEnum();
        RuleFor(d => d.OnPoweroff).IsDefinedEnum();
        RuleFor(d => d.OnReboot).IsDefinedEnum();
        RuleFor(d => d.OnCrash).IsDefinedEnum();
        RuleFor(d => d.Description).MaximumLength(MaxDescription)
            .WithMessage($"must be at most {MaxDescription} characters");

        RuleFor(d => d.Disks).NotNull().WithMessage("must be a list")
            .Must(l => l is null || l.Count <= MaxDisks).WithMessage($"must have at most {MaxDisks} entries");
        RuleForEach(d => d.Disks).NotNull().WithMessage("must not be null").ChildRules(disk =>
        {
            disk.RuleFor(x => x.Path).Empty().WithMessage("give path or volume, not both").When(x => x.Volume is not null);
            if (paths is not null)
            {
                disk.RuleFor(x => x.Path).Custom((p, ctx) => Report(paths.Check(p), ctx)).When(x => x.Volume is null);
                disk.RuleFor(x => x.Volume).Custom((v, ctx) => Report(paths.CheckVolume(v), ctx)).When(x => x.Volume is not null);
            }
            else
            {
                disk.RuleFor(x => x.Volume).Must(v => Storage.VolumeRef.TryParse(v, out _, out _))
                    .WithMessage($"must be '<pool>/<volume>'").When(x => x.Volume is not null);
            }
            disk.RuleFor(x => x.Format).IsDefinedEnum();
            disk.RuleFor(x => x.Bus).IsDefinedEnum();
        });

        RuleFor(d => d.Nics).NotNull().WithMessage("must be a list")
            .Must(l => l is null || l.Count <= MaxNics).WithMessage($"must have at most {MaxNics} entries");
        RuleForEach(d => d.Nics).NotNull().WithMessage("must not be null").ChildRules(nic =>
        {
            nic.RuleFor(x => x.Mode).IsDefinedEnum();
        });

        When(d => d.Boot is not null, () =>
        {
            if (paths is not null)
            {
                RuleFor(d => d.Boot!.Kernel).Custom((p, ctx) => Report(paths.Check(p), ctx)).When(d => d.Boot!.Kernel is not null);
                RuleFor(d => d.Boot!.Initrd).Custom((p, ctx) => Report(paths.Check(p), ctx)).When(d => d.Boot!.Initrd is not null);
            }
            RuleFor(d => d.Boot!.Kernel).NotNull().WithMessage("is required when initrd or cmdline is given")
                .When(d => d.Boot!.Initrd is not null || d.Boot!.Cmdline is not null);
            RuleFor(d => d.Boot!.Cmdline).MaximumLength(4096).WithMessage("must be at most 4096 characters")
                .Must(c => c is null || !c.Contains('\0')).WithMessage("must not contain NUL");
        });

        When(d => d.Simulation is not null, () =>
        {
            RuleFor(d => d.Simulation!.BootDelayMs).InclusiveBetween(0, MaxSimulationDelayMs)
                .WithMessage($"must be between 0 and {MaxSimulationDelayMs}");
            RuleFor(d => d.Simulation!.AcpiShutdownDelayMs).InclusiveBetween(0, MaxSimulationDelayMs)
                .WithMessage($"must be between 0 and {MaxSimulationDelayMs}");
        });
    }

    public int HostCpus { get; }

    public static int MaxVcpus(int hostCpus) => Math.Clamp(hostCpus * 4, 1, 256);

    private static void Report<T>(string? problem, ValidationContext<T> ctx)
    {
        if (problem is not null) ctx.AddFailure(problem);
    }

    /// <summary>Every rule a definition breaks, as one line (<c>memoryMiB: must be ...; disks[0].format: ...</c>), or null.</summary>
    public string? Problem(DomainDefinition definition)
    {
        var result = Validate(definition);
        return result.IsValid ? null : string.Join("; ", result.Errors.Select(e => $"{NormalisePath(e.PropertyName)}: {e.ErrorMessage}").Distinct());
    }

    /// <summary>Runs the rules and throws <c>validation-failed</c> with every field's messages.</summary>
    public void ValidateOrThrow(DomainDefinition definition)
    {
        var result = Validate(definition);
        if (result.IsValid) return;
        var errors = result.Errors
            .GroupBy(e => NormalisePath(e.PropertyName))
            .ToDictionary(g => g.Key, g => g.Select(e => e.ErrorMessage).Distinct().ToArray());
        throw Errors.VirtdException.Validation(errors);
    }

    /// <summary>"disks[0]." (an element rule on the item itself) becomes "disks[0]"; segments are camelCase.</summary>
    internal static string NormalisePath(string name)
    {
        var trimmed = name.Trim('.');
        var parts = trimmed.Split('.', StringSplitOptions.RemoveEmptyEntries);
        return string.Join('.', parts.Select(p => p.Length > 0 ? char.ToLowerInvariant(p[0]) + p[1..] : p));
    }
}

/// <summary>
/// An enum value that names a member. FluentValidation's own <c>IsInEnum()</c> reads an enum's values through
/// <c>Enum.GetValues(Type)</c> (for flag enums), which Native AOT cannot promise; <see cref="Enum.IsDefined{TEnum}(TEnum)"/> can.
/// </summary>
internal static class EnumRules
{
    private const string Message = "'{PropertyValue}' is not one of its values";

    public static IRuleBuilderOptions<T, TEnum> IsDefinedEnum<T, TEnum>(this IRuleBuilder<T, TEnum> rule) where TEnum : struct, Enum =>
        rule.Must(v => Enum.IsDefined(v)).WithMessage(Message);

    public static IRuleBuilderOptions<T, TEnum?> IsDefinedEnum<T, TEnum>(this IRuleBuilder<T, TEnum?> rule) where TEnum : struct, Enum =>
        rule.Must(v => v is not { } value || Enum.IsDefined(value)).WithMessage(Message);
}
