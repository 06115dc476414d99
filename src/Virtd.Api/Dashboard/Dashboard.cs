using Microsoft.AspNetCore.StaticFiles;
using Microsoft.Extensions.FileProviders;

namespace Virtd.Api.Dashboard;

/// <summary>
/// The web dashboard at <c>/</c>: static files from <c>wwwroot</c> next to the daemon (its own code and the vendored
/// xterm.js and noVNC), anonymous like Swagger UI: they hold no data, and every call they make authenticates with the
/// session cookie. No CDN, no request leaves the daemon (the Content-Security-Policy says so to the browser too).
/// </summary>
public static class Dashboard
{
    /// <summary>What the browser may load and connect to: this daemon only.</summary>
    public const string ContentSecurityPolicy =
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; " +
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

    private static bool IsDashboard(PathString path) =>
        path == "/" || path == "/index.html" || path == "/app.js" || path == "/app.css" || path.StartsWithSegments("/vendor");

    public static WebApplication UseDashboard(this WebApplication app)
    {
        var root = Path.Combine(AppContext.BaseDirectory, "wwwroot");
        if (!Directory.Exists(root))
        {
            app.Logger.LogWarning("no dashboard: {Root} does not exist", root);
            return app;
        }
        var files = new PhysicalFileProvider(root);
        var types = new FileExtensionContentTypeProvider();
        types.Mappings[".mjs"] = "text/javascript";
        app.UseWhen(http => IsDashboard(http.Request.Path) && (HttpMethods.IsGet(http.Request.Method) || HttpMethods.IsHead(http.Request.Method)), b =>
        {
            b.Use((http, next) =>
            {
                var h = http.Response.Headers;
                h.ContentSecurityPolicy = ContentSecurityPolicy;
                h.XContentTypeOptions = "nosniff";
                h["Referrer-Policy"] = "no-referrer";
                h.CacheControl = "no-cache"; // revalidated (ETag) each time: a new daemon's dashboard is seen at once
                return next(http);
            });
            b.UseDefaultFiles(new DefaultFilesOptions { FileProvider = files });
            b.UseStaticFiles(new StaticFileOptions { FileProvider = files, ContentTypeProvider = types });
        });
        return app;
    }
}
