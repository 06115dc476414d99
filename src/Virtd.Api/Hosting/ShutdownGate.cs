using Virtd.Api.Errors;
using Virtd.Core.Errors;

namespace Virtd.Api.Hosting;

public static class ShutdownGate
{
    /// <summary>Once shutdown began, state-changing requests get 503 <c>shutting-down</c> with Retry-After; reads still work.</summary>
    public static IApplicationBuilder UseShutdownGate(this IApplicationBuilder app) => app.Use(async (http, next) =>
    {
        var method = http.Request.Method;
        if (!HttpMethods.IsGet(method) && !HttpMethods.IsHead(method) && !HttpMethods.IsOptions(method)
            && http.RequestServices.GetRequiredService<DaemonStatus>().State == DaemonState.Stopping)
        {
            await ProblemResponses.WriteAsync(http, VirtdException.ShuttingDown()).ConfigureAwait(false);
            return;
        }
        await next(http).ConfigureAwait(false);
    });
}
