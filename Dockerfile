# virtd: build with the .NET SDK, run on the ASP.NET runtime with Debian's QEMU.
#   docker build -t virtd .
#   docker run --rm -p 8470:8470 -v virtd-state:/var/lib/virtd virtd
# KVM (when the host has it): add --device /dev/kvm. Without it guests run under TCG. VMs are the
# daemon's children in the container: they stop with it (use the host service for VMs that outlive it).

FROM mcr.microsoft.com/dotnet/sdk:10.0-trixie-slim AS build
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props Api.sln ./
COPY src/Virtd.Core/Virtd.Core.csproj src/Virtd.Core/
COPY src/Virtd.Drivers.Simulated/Virtd.Drivers.Simulated.csproj src/Virtd.Drivers.Simulated/
COPY src/Virtd.Drivers.Qemu/Virtd.Drivers.Qemu.csproj src/Virtd.Drivers.Qemu/
COPY src/Virtd.Api/Virtd.Api.csproj src/Virtd.Api/
RUN dotnet restore src/Virtd.Api/Virtd.Api.csproj
COPY src/ src/
# The OpenAPI document is committed; the image build need not regenerate it.
RUN dotnet publish src/Virtd.Api/Virtd.Api.csproj -c Release -o /app --no-restore -p:OpenApiGenerateDocuments=false

FROM mcr.microsoft.com/dotnet/aspnet:10.0-trixie-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-system-x86 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app ./
ENV VIRTD_StateDirectory=/var/lib/virtd \
    VIRTD_RunDirectory=/run/virtd \
    DOTNET_CLI_TELEMETRY_OPTOUT=1
VOLUME ["/var/lib/virtd"]
EXPOSE 8470
ENTRYPOINT ["dotnet", "/app/virtd.dll", "--urls", "http://0.0.0.0:8470"]
