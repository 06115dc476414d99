using Virtd.Api.Errors;
using Virtd.Core.Errors;

namespace Virtd.Api.Hosting;

public static class ShutdownGate
{
    /// <summary>Once shutdown began, state-changing requests get 503 <c>shutting-down</c> with Retry-After; reads still work.</summary>
    public static IApplicationBuilder UseShutdownGate(this IApplicationBuilder app)
    {
        DaemonStatus? status = null;
        return app.Use((http, next) =>
        {
            var method = http.Request.Method;
            if (!HttpMethods.IsGet(method) && !HttpMethods.IsHead(method) && !HttpMethods.IsOptions(method)
                && (status ??= app.ApplicationServices.GetRequiredService<DaemonStatus>()).State == DaemonState.Stopping)
                return ProblemResponses.WriteAsync(http, VirtdException.ShuttingDown());
            return next(http);
        });
    }
}
