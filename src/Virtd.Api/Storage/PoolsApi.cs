using System.Text.Json;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Api.Errors;
using Virtd.Api.Jobs;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Storage;

namespace Virtd.Api.Storage;

public sealed record PoolListDto(int Count, IReadOnlyList<PoolInfo> Items);

public sealed record VolumeListDto(int Count, IReadOnlyList<VolumeInfo> Items);

/// <summary>Body of <c>POST /api/v1/pools/{pool}/volumes</c>.</summary>
public sealed record CreateVolumeRequest
{
    /// <summary>The new volume's file name in the pool.</summary>
    public string? Name { get; init; }
    /// <summary>raw or qcow2. Absent: qcow2 for a clone, the source's format for a copy, raw otherwise.</summary>
    public DiskFormat? Format { get; init; }
    /// <summary>Virtual size: bytes as a number, or a string with a binary unit ("10GiB"). Required unless cloning or copying.</summary>
    public JsonElement? Capacity { get; init; }
    /// <summary>Make a copy-on-write clone of this volume (<c>pool/name</c>): a qcow2 whose backing file it is.</summary>
    public string? BackingVolume { get; init; }
    /// <summary>Make a full copy of this volume (<c>pool/name</c>): answered 202 with a job that reports progress.</summary>
    public string? From { get; init; }
}

/// <summary>Body of <c>POST .../volumes/{volume}/resize</c>.</summary>
public sealed record ResizeVolumeRequest
{
    /// <summary>The new virtual size: bytes as a number, or a string with a binary unit ("20GiB").</summary>
    public JsonElement? Capacity { get; init; }
    /// <summary>Allow a smaller size (what lies beyond it is lost). Default false: grow only.</summary>
    public bool Shrink { get; init; }
}

public static class PoolsApi
{
    public static IEndpointRouteBuilder MapPoolsApi(this IEndpointRouteBuilder app)
    {
        var g = app.MapGroup("/api/v1/pools").WithTags("Storage");
        g.MapGet("", ListPools).WithName("ListPools").WithSummary("Storage pools: name, directory, capacity and free bytes")
            .Requires(Role.Reader);
        g.MapGet("/{pool}", GetPool).WithName("GetPool").WithSummary("One storage pool").Requires(Role.Reader).Problems(404);
        g.MapGet("/{pool}/volumes", ListVolumesAsync).WithName("ListVolumes")
            .WithSummary("A pool's volumes: name, format, virtual size, allocation, backing volume, the domains that use it")
            .Requires(Role.Reader).Problems(404);
        g.MapPost("/{pool}/volumes", CreateVolumeAsync).WithName("CreateVolume")
            .WithSummary("Create a volume: empty (capacity), a copy-on-write clone (backingVolume), or a full copy (from: 202 and a job)")
            .Requires(Role.Admin).Audited(201).Problems(400, 404, 409, 413, 415);
        g.MapGet("/{pool}/volumes/{volume}", GetVolumeAsync).WithName("GetVolume").WithSummary("One volume")
            .Requires(Role.Reader).Problems(404);
        g.MapDelete("/{pool}/volumes/{volume}", DeleteVolumeAsync).WithName("DeleteVolume")
            .WithSummary("Delete a volume; 409 volume-in-use while a domain's definition names it or a clone is backed by it")
            .Requires(Role.Admin).Audited(204).Problems(404, 409);
        g.MapPost("/{pool}/volumes/{volume}/resize", ResizeVolumeAsync).WithName("ResizeVolume")
            .WithSummary("Set a volume's virtual size: grow, or shrink with \"shrink\": true; not while a running domain uses it")
            .Requires(Role.Admin).Audited(200).Problems(400, 404, 409, 413, 415);
        g.MapPut("/{pool}/volumes/{volume}/content", UploadVolumeAsync).WithName("UploadVolume")
            .WithSummary("Upload an image as the body (streamed to disk), creating the volume or replacing its content; ?format=raw|qcow2, else recognised by qemu-img")
            .WithDescription("The body is the image's bytes (`curl -T disk.qcow2`). At most `Storage:MaxUploadBytes`; more is 413 and leaves nothing behind. "
                + "A qcow2 whose backing chain leaves the pools is refused (400). 201 when the volume is new, 200 when its content was replaced.")
            .Accepts<Stream>("application/octet-stream")
            .Requires(Role.Admin).Audited(201).Problems(400, 404, 409, 413);
        g.MapGet("/{pool}/volumes/{volume}/content", DownloadVolume).WithName("DownloadVolume")
            .WithSummary("Download a volume's image as it is on disk (Range requests work)")
            .Produces(StatusCodes.Status200OK, contentType: "application/octet-stream")
            .Requires(Role.Admin).Problems(404);
        return app;
    }

    public static Ok<PoolListDto> ListPools(VolumeService volumes)
    {
        var pools = volumes.Pools();
        return TypedResults.Ok(new PoolListDto(pools.Count, pools));
    }

    public static Ok<PoolInfo> GetPool(string pool, VolumeService volumes) => TypedResults.Ok(volumes.Pool(pool));

    public static async Task<Ok<VolumeListDto>> ListVolumesAsync(string pool, VolumeService volumes, CancellationToken ct)
    {
        var list = await volumes.ListAsync(pool, ct).ConfigureAwait(false);
        return TypedResults.Ok(new VolumeListDto(list.Count, list));
    }

    public static async Task<Ok<VolumeInfo>> GetVolumeAsync(string pool, string volume, VolumeService volumes, CancellationToken ct) =>
        TypedResults.Ok(await volumes.GetAsync(pool, volume, ct).ConfigureAwait(false));

    public static async Task<Results<Created<VolumeInfo>, Accepted<JobDto>>> CreateVolumeAsync(string pool, CreateVolumeRequest request, HttpContext http,
        VolumeService volumes, CancellationToken ct)
    {
        var errors = new Dictionary<string, string[]>();
        if (VolumeNames.Problem(request.Name) is { } bad) errors["name"] = [bad];
        if (request.Format is { } f && !Enum.IsDefined(f)) errors["format"] = ["must be raw or qcow2"];
        long? capacity = null;
        if (request.Capacity is { ValueKind: not JsonValueKind.Null } c)
        {
            if (Capacity.TryParse(c, out var bytes, out var problem)) capacity = bytes;
            else errors["capacity"] = [problem!];
        }
        if (request.From is not null && request.BackingVolume is not null) errors["from"] = ["give from (a full copy) or backingVolume (a clone), not both"];
        if (request.From is not null && capacity is not null) errors["capacity"] = ["a copy takes its source's size; resize it afterwards"];
        if (errors.Count > 0) throw VirtdException.Validation(errors);

        if (request.From is not null)
        {
            var job = volumes.StartCopy(pool, request.Name!, request.Format, request.From);
            Audit.Of(http).Write(jobId: job.Id);
            return TypedResults.Accepted($"/api/v1/jobs/{job.Id}", JobDto.From(job));
        }
        Audit.Of(http).Write();
        var created = await volumes.CreateAsync(pool, request.Name!, request.Format, capacity, request.BackingVolume, ct).ConfigureAwait(false);
        return TypedResults.Created(Location(created), created);
    }

    public static async Task<NoContent> DeleteVolumeAsync(string pool, string volume, HttpContext http, VolumeService volumes, CancellationToken ct)
    {
        await volumes.GetAsync(pool, volume, ct).ConfigureAwait(false); // 404 first
        Audit.Of(http).Write();
        await volumes.DeleteAsync(pool, volume, ct).ConfigureAwait(false);
        return TypedResults.NoContent();
    }

    public static async Task<Ok<VolumeInfo>> ResizeVolumeAsync(string pool, string volume, ResizeVolumeRequest request, HttpContext http,
        VolumeService volumes, CancellationToken ct)
    {
        if (request.Capacity is not { ValueKind: not JsonValueKind.Null } c) throw VirtdException.Validation("capacity", "is required (bytes, or a string like \"20GiB\")");
        if (!Capacity.TryParse(c, out var bytes, out var problem)) throw VirtdException.Validation("capacity", problem!);
        Audit.Of(http).Write();
        return TypedResults.Ok(await volumes.ResizeAsync(pool, volume, bytes, request.Shrink, ct).ConfigureAwait(false));
    }

    public static async Task<Results<Created<VolumeInfo>, Ok<VolumeInfo>>> UploadVolumeAsync(string pool, string volume, string? format, HttpContext http,
        VolumeService volumes, StorageOptions storage, CancellationToken ct)
    {
        var fmt = EnumText.ParseQuery<DiskFormat>("format", format);
        // This body is an image, not JSON: its limit is Storage:MaxUploadBytes (checked while it streams), not the API's.
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = null;
        Audit.Of(http).Write();
        var (info, created) = await volumes.UploadAsync(pool, volume, fmt, http.Request.Body, http.Request.ContentLength, ct).ConfigureAwait(false);
        return created ? TypedResults.Created(Location(info), info) : TypedResults.Ok(info);
    }

    public static FileStreamHttpResult DownloadVolume(string pool, string volume, VolumeService volumes) =>
        TypedResults.File(volumes.OpenRead(pool, volume), "application/octet-stream", fileDownloadName: volume, enableRangeProcessing: true);

    /// <summary>An image upload, whose body is limited by <c>Storage:MaxUploadBytes</c> rather than the API's 1 MiB (known before routing).</summary>
    public static bool IsUpload(HttpRequest request) =>
        HttpMethods.IsPut(request.Method) && request.Path.StartsWithSegments("/api/v1/pools", StringComparison.Ordinal)
        && request.Path.Value!.EndsWith("/content", StringComparison.Ordinal);

    private static string Location(VolumeInfo v) => $"/api/v1/pools/{Uri.EscapeDataString(v.Pool)}/volumes/{Uri.EscapeDataString(v.Name)}";
}
