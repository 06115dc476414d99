# virtd: published as one Native AOT binary with the .NET SDK, run with Debian's QEMU (no .NET runtime in the image).
#   docker build -t virtd .
#   docker run --rm -p 127.0.0.1:8470:8470 -v virtd-state:/var/lib/virtd -v /run/virtd:/run/virtd virtd
# Never anonymous: TCP needs a bearer token. The first start writes an admin token's secret to the state volume:
#   curl -H "Authorization: Bearer $(docker exec CONTAINER cat /var/lib/virtd/initial-admin-token)" localhost:8470/api/v1/domains
# and the host's root reaches the daemon through the Unix sockets in the mounted run directory:
#   curl --unix-socket /run/virtd/virtd.sock http://localhost/api/v1/domains      (admin; virtd-ro.sock: read-only)
# Inside the container the daemon must listen on every interface for -p to reach it, so plain HTTP on a network
# address is allowed here (Security:AllowPlainHttpOnNetwork): publish the port on 127.0.0.1 as above, or serve
# HTTPS (mount a certificate and set --urls https://0.0.0.0:8470 --Kestrel:Certificates:Default:Path ... ;
# README "TLS"). Clients that use another host name than localhost: add it with -e VIRTD_Security__Hostnames__0=NAME.
# KVM (when the host has it): add --device /dev/kvm. Without it guests run under TCG. VMs are the
# daemon's children in the container: they stop with it (use the host service for VMs that outlive it).
# QEMU runs as the user virtd-qemu (made below) with no capabilities; disks reach it as open descriptors.

FROM mcr.microsoft.com/dotnet/sdk:10.0-trixie-slim AS build
# Native AOT links with clang against zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props Api.sln ./
COPY src/Directory.Build.props src/
COPY src/Virtd.Core/Virtd.Core.csproj src/Virtd.Core/
COPY src/Virtd.Drivers.Simulated/Virtd.Drivers.Simulated.csproj src/Virtd.Drivers.Simulated/
COPY src/Virtd.Drivers.Qemu/Virtd.Drivers.Qemu.csproj src/Virtd.Drivers.Qemu/
COPY src/Virtd.Api/Virtd.Api.csproj src/Virtd.Api/
RUN dotnet restore src/Virtd.Api/Virtd.Api.csproj -r linux-x64 -p:PublishAot=true
COPY src/ src/
# The Native AOT binary, as scripts/publish makes it. The OpenAPI document is committed; the image build need not regenerate it.
RUN dotnet publish src/Virtd.Api/Virtd.Api.csproj -c Release -r linux-x64 -o /app --no-restore \
    -p:PublishAot=true -p:OpenApiGenerateDocuments=false \
 && rm -f /app/*.dbg /app/*.pdb

# No .NET runtime: the binary carries what it needs.
FROM debian:trixie-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group virtd-qemu
WORKDIR /app
COPY --from=build /app ./
ENV VIRTD_StateDirectory=/var/lib/virtd \
    VIRTD_RunDirectory=/run/virtd \
    VIRTD_Security__AllowPlainHttpOnNetwork=true
VOLUME ["/var/lib/virtd", "/run/virtd"]
EXPOSE 8470
ENTRYPOINT ["/app/virtd", "--urls", "http://0.0.0.0:8470"]
